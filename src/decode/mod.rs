//! Record bytes -> Arrow rows, with every bad record sent to the dead letters.
//!
//! Decoding uses arrow-json's streaming decoder against the schema from `schemas/`.
//! Cheap checks run per record first (tombstone, size, UTF-8, raw control characters,
//! the broker timestamp's range: see `checks`). The fast path then feeds
//! the whole batch to one decoder, checking after each record that it produced exactly
//! one complete row, and flushes once, without copying. If anything is off (a syntax error, a type that does
//! not match, a record holding two objects or half of one), the bad records are isolated
//! without giving up batch decoding for the rest: one pass finds the records that break
//! the JSON stream, the runs between them are decoded whole, and a run whose rows do not
//! fit the schema is halved until its bad rows are alone. Each bad record is decoded on
//! its own for its error, and the good ones still go through. Decoded rows with a
//! timestamp readers cannot hold are taken out last. Bad input never fails a batch.

pub mod avro;
mod checks;
pub mod protobuf;
pub mod writers;

use std::sync::{Arc, Mutex};

use arrow::array::{
    ArrayRef, Int32Array, Int64Array, RecordBatch, StringArray, TimestampMillisecondArray,
};
use arrow::compute::concat_batches;
use arrow::datatypes::SchemaRef;
use arrow::error::ArrowError;
use arrow::json::reader::Decoder;
use arrow::json::ReaderBuilder;

use crate::batch::{Batch, DeadLetter, DeadLetterKind, RawBatch, RawRecord, TopicPartition};
use crate::config::{HeaderColumn, HeaderType, UnknownFields};
use crate::schema::{row_schema, with_provenance};

const STAGE: &str = "decode";

/// Runs this short are decoded record by record rather than halved again.
const ISOLATE_BELOW: usize = 8;

/// What decoding a batch has produced so far: rows in record order, and dead letters.
pub(crate) struct Decoded<'a> {
    tp: &'a TopicPartition,
    parts: Vec<RecordBatch>,
    good: Vec<RawRecord<'a>>,
    dead_letters: Vec<DeadLetter>,
}

impl<'a> Decoded<'a> {
    fn push(&mut self, rows: RecordBatch, records: &[(RawRecord<'a>, &[u8])]) {
        self.parts.push(rows);
        self.good.extend(records.iter().map(|(r, _)| *r));
    }

    pub(crate) fn new(tp: &'a TopicPartition, records: usize) -> Self {
        Decoded {
            tp,
            parts: Vec::new(),
            good: Vec::with_capacity(records),
            dead_letters: Vec::new(),
        }
    }

    fn reject(&mut self, record: &RawRecord<'_>, (kind, reason): Rejected) {
        self.dead_letters
            .push(DeadLetter::new(STAGE, self.tp, record, kind, reason));
    }
}

/// Why one record was rejected.
type Rejected = (DeadLetterKind, String);

/// A record's payload, unless it has none (a tombstone) or it is over `max_bytes`: the
/// first checks of every format.
fn payload_within<'a>(record: &RawRecord<'a>, max_bytes: usize) -> Result<&'a [u8], Rejected> {
    let payload = record.payload.ok_or_else(|| {
        (
            DeadLetterKind::Tombstone,
            "record has no value (tombstone)".to_owned(),
        )
    })?;
    if payload.len() > max_bytes {
        return Err((
            DeadLetterKind::Oversized,
            format!(
                "record is {} bytes, over decode.max_record_bytes ({max_bytes} bytes)",
                payload.len(),
            ),
        ));
    }
    Ok(payload)
}

/// Whether some field is a timestamp or date (decoded rows are range-checked).
fn holds_dates(record_schema: &SchemaRef) -> bool {
    record_schema
        .fields()
        .iter()
        .any(|f| checks::holds_dates(f.data_type()))
}

/// The decoder a pipeline's `decode.format` asks for.
#[derive(Debug)]
pub enum RecordDecoder {
    Json(JsonDecoder),
    Avro(avro::AvroDecoder),
    Protobuf(protobuf::ProtobufDecoder),
}

impl RecordDecoder {
    /// The decoder for `pipeline`'s `decode` section.
    pub fn for_pipeline(
        pipeline: &crate::pipeline::Pipeline,
        stats: std::sync::Arc<crate::telemetry::Stats>,
    ) -> Result<Self, crate::schema_registry::RegistryError> {
        let decode = &pipeline.config.decode;
        let crate::config::SourceConfig::Kafka(source) = &pipeline.config.source;
        let headers = &source.headers;
        let max_record_bytes = decode.max_record_bytes.as_u64() as usize;
        if let (Some(reader), Some(registry)) = (&pipeline.proto_message, &decode.schema_registry) {
            return Ok(RecordDecoder::Protobuf(
                protobuf::ProtobufDecoder::new(
                    reader.clone(),
                    pipeline.record_schema.clone(),
                    max_record_bytes,
                    crate::schema_registry::SchemaRegistry::new(registry)?,
                )
                .with_headers(headers)
                .with_stats(stats),
            ));
        }
        match (&pipeline.avro_schema, &decode.schema_registry) {
            (Some(reader), Some(registry)) => Ok(RecordDecoder::Avro(
                avro::AvroDecoder::new(
                    reader,
                    pipeline.record_schema.clone(),
                    max_record_bytes,
                    crate::schema_registry::SchemaRegistry::new(registry)?,
                )
                .with_headers(headers)
                .with_stats(stats),
            )),
            _ => Ok(RecordDecoder::Json(
                JsonDecoder::new(
                    pipeline.record_schema.clone(),
                    max_record_bytes,
                    decode.unknown_fields,
                )
                .with_headers(headers),
            )),
        }
    }

    pub fn output_schema(&self) -> &SchemaRef {
        match self {
            RecordDecoder::Json(json) => json.output_schema(),
            RecordDecoder::Avro(avro) => avro.output_schema(),
            RecordDecoder::Protobuf(protobuf) => protobuf.output_schema(),
        }
    }

    /// What must happen before [`Self::decode`] can run without I/O: for Avro and
    /// Protobuf, fetching the writer schemas the batch refers to (waiting while the
    /// registry is away).
    pub async fn prepare(
        &self,
        raw: &RawBatch,
        shutdown: &tokio_util::sync::CancellationToken,
    ) -> Result<(), writers::PrepareError> {
        match self {
            RecordDecoder::Json(_) => Ok(()),
            RecordDecoder::Avro(avro) => avro.prepare(raw, shutdown).await,
            RecordDecoder::Protobuf(protobuf) => protobuf.prepare(raw, shutdown).await,
        }
    }

    pub fn decode(&self, raw: &RawBatch) -> Result<Batch, ArrowError> {
        match self {
            RecordDecoder::Json(json) => json.decode(raw),
            RecordDecoder::Avro(avro) => avro.decode(raw),
            RecordDecoder::Protobuf(protobuf) => protobuf.decode(raw),
        }
    }
}

/// Decodes JSON records of one schema.
#[derive(Debug, Clone)]
pub struct JsonDecoder {
    layout: RowLayout,
    max_record_bytes: usize,
    strict: bool,
    /// Shared by the clones that decode batches at once.
    kept: Arc<KeptDecoders>,
}

/// Most decoders kept for reuse: one per batch decoded at once is enough.
const KEEP_DECODERS: usize = 4;

/// Decoders that read a whole batch and flushed it cleanly, kept for the next batch. A
/// new one starts with almost no buffer space and grows it by doubling (for a batch of
/// 10,000 feedback records, a dozen reallocations and copies of the string bytes alone);
/// a kept one starts with the space the last batch needed. Each is kept with the most
/// rows it takes at once (arrow-json's batch size), so it is only reused for batches
/// that fit.
#[derive(Debug, Default)]
struct KeptDecoders(Mutex<Vec<(usize, Decoder)>>);

impl KeptDecoders {
    fn take(&self, rows: usize) -> Option<(usize, Decoder)> {
        let mut kept = self.0.lock().ok()?;
        let at = kept.iter().position(|(most, _)| *most >= rows)?;
        Some(kept.swap_remove(at))
    }

    /// Keeps `decoder`, which must hold no rows (it has just flushed cleanly).
    fn keep(&self, most: usize, decoder: Decoder) {
        if let Ok(mut kept) = self.0.lock() {
            if kept.len() < KEEP_DECODERS {
                kept.push((most, decoder));
            }
        }
    }
}

impl JsonDecoder {
    pub fn new(
        record_schema: SchemaRef,
        max_record_bytes: usize,
        unknown_fields: UnknownFields,
    ) -> Self {
        JsonDecoder {
            layout: RowLayout::new(record_schema),
            max_record_bytes,
            strict: unknown_fields == UnknownFields::Reject,
            kept: Arc::default(),
        }
    }

    /// Schema of decoded rows: record fields plus provenance columns.
    pub fn output_schema(&self) -> &SchemaRef {
        &self.layout.output_schema
    }

    /// Rows also carry these record headers as columns, after the record's fields.
    pub fn with_headers(mut self, headers: &[HeaderColumn]) -> Self {
        self.layout.set_headers(headers);
        self
    }

    fn new_decoder(&self, rows: usize) -> Result<Decoder, ArrowError> {
        ReaderBuilder::new(self.layout.record_schema.clone())
            .with_batch_size(rows.max(1))
            .with_strict_mode(self.strict)
            .build_decoder()
    }

    /// Decodes a raw batch. Errors are internal (Arrow could not build arrays it should
    /// be able to build), never caused by bad input.
    pub fn decode(&self, raw: &RawBatch) -> Result<Batch, ArrowError> {
        let mut decoded = Decoded::new(&raw.provenance.tp, raw.len());
        let mut candidates: Vec<(RawRecord<'_>, &[u8])> = Vec::with_capacity(raw.len());
        for record in raw.records() {
            match self.screen(&record) {
                Ok(payload) => candidates.push((record, payload)),
                Err(reason) => decoded.reject(&record, reason),
            }
        }
        self.decode_isolating(&candidates, &mut decoded)?;
        self.layout.finish(decoded, raw)
    }

    /// Per-record checks that need no JSON parsing.
    fn screen<'a>(&self, record: &RawRecord<'a>) -> Result<&'a [u8], Rejected> {
        let payload = payload_within(record, self.max_record_bytes)?;
        // simdutf8 (arrow-json's own validator) is several times faster than std on
        // records this short; std says where a bad one goes wrong.
        if simdutf8::basic::from_utf8(payload).is_err() {
            let reason = match std::str::from_utf8(payload) {
                Err(e) => format!("record is not valid UTF-8: {e}"),
                Ok(_) => "record is not valid UTF-8".to_owned(),
            };
            return Err((DeadLetterKind::InvalidUtf8, reason));
        }
        if payload.iter().all(u8::is_ascii_whitespace) {
            return Err((DeadLetterKind::EmptyRecord, "record is empty".to_owned()));
        }
        if let Some((at, byte)) = checks::raw_control_character(payload) {
            return Err((
                DeadLetterKind::MalformedJson,
                format!(
                    "not valid JSON: raw control character U+{byte:04X} at byte {at} \
                     (JSON requires it escaped, e.g. \\u{byte:04x})"
                ),
            ));
        }
        if let Some(ms) = record
            .timestamp
            .filter(|ms| !checks::broker_timestamp_ok(*ms))
        {
            return Err((
                DeadLetterKind::BadTimestamp,
                format!(
                    "the record's Kafka timestamp {ms} ms is outside 1677-09-21..2262-04-11, \
                     which Parquet readers cannot convert"
                ),
            ));
        }
        Ok(payload)
    }

    /// All records through one decoder. `None` when any record is bad.
    fn decode_all(
        &self,
        records: &[(RawRecord<'_>, &[u8])],
    ) -> Result<Option<RecordBatch>, ArrowError> {
        let mut decoder = self.new_decoder(records.len())?;
        for (i, (_, payload)) in records.iter().enumerate() {
            if !adds_one_row(&mut decoder, payload, i + 1) {
                return Ok(None);
            }
        }
        match decoder.flush() {
            Ok(Some(batch)) if batch.num_rows() == records.len() => Ok(Some(batch)),
            Ok(None) if records.is_empty() => Ok(Some(RecordBatch::new_empty(
                self.layout.record_schema.clone(),
            ))),
            _ => Ok(None),
        }
    }

    /// One decoder reads the records, checking after each that it made exactly one
    /// complete row. A record that breaks the JSON stream (a syntax error, half an object,
    /// two values) ends the run: the run before it is decoded whole, the breaking record
    /// alone, and reading goes on after it with a fresh decoder. A clean batch is one run,
    /// flushed once (the fast path).
    fn decode_isolating<'a>(
        &self,
        records: &[(RawRecord<'a>, &[u8])],
        out: &mut Decoded<'a>,
    ) -> Result<(), ArrowError> {
        let mut start = 0;
        let (most, mut decoder) = match self.kept.take(records.len()) {
            Some(kept) => kept,
            None => (records.len(), self.new_decoder(records.len())?),
        };
        for (i, (_, payload)) in records.iter().enumerate() {
            if adds_one_row(&mut decoder, payload, i - start + 1) {
                continue;
            }
            self.decode_run(&records[start..i], false, out)?;
            self.decode_each(&records[i..=i], out)?;
            start = i + 1;
            decoder = self.new_decoder(records.len() - start)?;
        }
        // The last run is in the decoder already; if its rows do not all fit the schema,
        // its halves are decoded apart.
        let tail = &records[start..];
        let first = start == 0;
        match decoder.flush() {
            Ok(Some(rows)) if rows.num_rows() == tail.len() => {
                out.push(rows, tail);
                if first {
                    // Every record went through it and it flushed: it holds nothing.
                    self.kept.keep(most, decoder);
                }
            }
            Ok(None) if tail.is_empty() => {}
            _ => self.decode_run(tail, true, out)?,
        }
        Ok(())
    }

    /// A run of records that are each one complete JSON value: decoded whole, or, when
    /// some row does not fit the schema (`known_bad`: that is already known), halved until
    /// the bad rows are alone.
    fn decode_run<'a>(
        &self,
        run: &[(RawRecord<'a>, &[u8])],
        known_bad: bool,
        out: &mut Decoded<'a>,
    ) -> Result<(), ArrowError> {
        if run.len() <= ISOLATE_BELOW {
            return self.decode_each(run, out);
        }
        if !known_bad {
            if let Some(rows) = self.decode_all(run)? {
                out.push(rows, run);
                return Ok(());
            }
        }
        let (left, right) = run.split_at(run.len() / 2);
        self.decode_run(left, false, out)?;
        self.decode_run(right, false, out)
    }

    /// One record at a time; bad ones become dead letters with their error.
    fn decode_each<'a>(
        &self,
        records: &[(RawRecord<'a>, &[u8])],
        out: &mut Decoded<'a>,
    ) -> Result<(), ArrowError> {
        for (record, payload) in records {
            match self.decode_one(payload)? {
                Ok(row) => out.push(row, &[(*record, payload)]),
                Err(reason) => out.reject(record, reason),
            }
        }
        Ok(())
    }

    fn decode_one(&self, payload: &[u8]) -> Result<Result<RecordBatch, Rejected>, ArrowError> {
        let malformed = |reason: String| Err((DeadLetterKind::MalformedJson, reason));
        let mut decoder = self.new_decoder(2)?;
        let outcome = match decoder.decode(payload) {
            Err(e) => malformed(format!("not valid JSON: {e}")),
            Ok(_) if decoder.has_partial_record() => {
                malformed("not valid JSON: the object is incomplete".to_owned())
            }
            Ok(_) if decoder.len() != 1 => malformed(format!(
                "expected one JSON object, found {} values",
                decoder.len()
            )),
            Ok(_) => match decoder.flush() {
                Ok(Some(row)) => Ok(row),
                Ok(None) => malformed("expected one JSON object, found none".to_owned()),
                Err(e) => Err((
                    DeadLetterKind::SchemaMismatch,
                    format!("does not match schema: {e}"),
                )),
            },
        };
        Ok(outcome)
    }
}

/// What every format's decoded rows look like: the declared record fields, then the kept
/// record headers and the provenance columns.
#[derive(Debug, Clone)]
pub(crate) struct RowLayout {
    record_schema: SchemaRef,
    /// Record fields, header columns, provenance columns.
    output_schema: SchemaRef,
    /// The kept record headers' column types, in column order.
    headers: Vec<HeaderType>,
    /// Some record field is a timestamp or date (rows are range-checked).
    holds_dates: bool,
}

impl RowLayout {
    pub(crate) fn new(record_schema: SchemaRef) -> Self {
        RowLayout {
            output_schema: with_provenance(&record_schema),
            headers: Vec::new(),
            holds_dates: holds_dates(&record_schema),
            record_schema,
        }
    }

    /// Rows also carry these record headers as columns, after the record's fields.
    pub(crate) fn set_headers(&mut self, headers: &[HeaderColumn]) {
        self.output_schema = row_schema(&self.record_schema, headers);
        self.headers = headers.iter().map(HeaderColumn::kind).collect();
    }

    /// The batch from what decoding produced: the parts in record order (one part: no
    /// copy), rows with out-of-range dates taken out, the provenance columns of the good
    /// records appended, dead letters in offset order.
    pub(crate) fn finish(&self, decoded: Decoded<'_>, raw: &RawBatch) -> Result<Batch, ArrowError> {
        finish(decoded, raw, self)
    }
}

fn finish(
    mut decoded: Decoded<'_>,
    raw: &RawBatch,
    layout: &RowLayout,
) -> Result<Batch, ArrowError> {
    let record_schema = &layout.record_schema;
    let mut fields = match decoded.parts.len() {
        0 => RecordBatch::new_empty(record_schema.clone()),
        // The usual case, a clean batch: no copy.
        1 => decoded.parts.swap_remove(0),
        _ => concat_batches(record_schema, &decoded.parts)?,
    };
    if layout.holds_dates {
        fields = take_out_of_range(fields, &mut decoded)?;
    }
    let rows = with_provenance_columns(
        &layout.output_schema,
        fields,
        raw,
        &decoded.good,
        &layout.headers,
    )?;
    let mut dead_letters = decoded.dead_letters;
    dead_letters.sort_by_key(|d| d.offset);
    Ok(Batch {
        provenance: raw.provenance.clone(),
        rows,
        dead_letters,
        retain_from: None,
    })
}

/// `fields` (one row per good record) with the kept headers' and the provenance columns
/// appended.
fn with_provenance_columns(
    output_schema: &SchemaRef,
    fields: RecordBatch,
    raw: &RawBatch,
    good: &[RawRecord<'_>],
    headers: &[HeaderType],
) -> Result<RecordBatch, ArrowError> {
    let n = good.len();
    let tp = &raw.provenance.tp;
    let mut columns: Vec<ArrayRef> = fields.columns().to_vec();
    for (h, kind) in headers.iter().enumerate() {
        let values = good.iter().map(|r| raw.header(r.index, h));
        columns.push(match kind {
            HeaderType::Utf8 => Arc::new(
                values
                    .map(|v| v.map(String::from_utf8_lossy))
                    .collect::<StringArray>(),
            ),
            HeaderType::Binary => Arc::new(values.collect::<arrow::array::BinaryArray>()),
        });
    }
    columns.push(Arc::new(StringArray::from_iter_values(
        std::iter::repeat_n(&*tp.topic, n),
    )));
    columns.push(Arc::new(Int32Array::from_value(tp.partition, n)));
    columns.push(Arc::new(Int64Array::from_iter_values(
        good.iter().map(|r| r.offset),
    )));
    columns.push(Arc::new(
        TimestampMillisecondArray::from_iter(good.iter().map(|r| r.timestamp)).with_timezone("UTC"),
    ));
    RecordBatch::try_new(output_schema.clone(), columns)
}

/// Sends the rows holding a timestamp or date readers cannot convert to the dead letters.
fn take_out_of_range<'a>(
    fields: RecordBatch,
    decoded: &mut Decoded<'a>,
) -> Result<RecordBatch, ArrowError> {
    let bad = checks::out_of_range_rows(&fields);
    if bad.is_empty() {
        return Ok(fields);
    }
    let rows: Vec<usize> = bad.iter().map(|(row, _)| *row).collect();
    let good = std::mem::take(&mut decoded.good);
    let mut next_bad = bad.into_iter().peekable();
    for (row, record) in good.into_iter().enumerate() {
        match next_bad.next_if(|(bad_row, _)| *bad_row == row) {
            Some((_, reason)) => decoded.reject(&record, (DeadLetterKind::BadTimestamp, reason)),
            None => decoded.good.push(record),
        }
    }
    checks::without_rows(&fields, &rows)
}

/// Feeds `payload` to `decoder`: whether it was exactly one complete JSON value, leaving
/// `rows` rows buffered.
fn adds_one_row(decoder: &mut Decoder, payload: &[u8], rows: usize) -> bool {
    decoder
        .decode(payload)
        .is_ok_and(|read| read == payload.len())
        && !decoder.has_partial_record()
        && decoder.len() == rows
}

#[cfg(test)]
mod tests;

//! Avro records in the Confluent wire format -> Arrow rows, with `arrow-avro`.
//!
//! Each record is a magic byte `0`, the writer schema's 4-byte big-endian registry id and
//! the Avro body. The declared `.avsc` schema is the reader schema: every writer schema is
//! resolved to it by Avro's rules (fields added with defaults, fields removed, numeric
//! promotions), so every batch has the declared columns whatever mix of writer versions
//! it holds.
//!
//! Writer schemas are fetched from the registry by id, once each, in [`AvroDecoder::prepare`]
//! (see [`super::writers`]: the stream pauses while the registry is away; an unusable
//! writer schema sends its records to the dead letters with the id and the reason).
//!
//! [`AvroDecoder::decode`] feeds the whole batch to one decoder (the fast path). If any
//! record fails there, each record is decoded on its own so that only the bad ones become
//! dead letters.

use std::collections::HashMap;

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use arrow::error::ArrowError;
use arrow_avro::reader::{Decoder, ReaderBuilder};
use arrow_avro::schema::{AvroSchema, Fingerprint, FingerprintAlgorithm, SchemaStore};
use tokio_util::sync::CancellationToken;

pub use super::writers::PrepareError;
use super::writers::{schema_id, Writer, WriterSchemas};
use super::{payload_within, Decoded, Rejected, RowLayout};
use crate::batch::{Batch, DeadLetterKind, RawBatch, RawRecord};
use crate::config::HeaderColumn;
use crate::schema_registry::SchemaRegistry;

/// Decodes Confluent-framed Avro records against one reader schema.
#[derive(Debug)]
pub struct AvroDecoder {
    reader: AvroSchema,
    layout: RowLayout,
    max_record_bytes: usize,
    writers: WriterSchemas<AvroSchema>,
}

impl AvroDecoder {
    /// `reader` is the declared schema's Avro JSON, `record_schema` its Arrow form.
    pub fn new(
        reader: &str,
        record_schema: SchemaRef,
        max_record_bytes: usize,
        registry: SchemaRegistry,
    ) -> Self {
        AvroDecoder {
            reader: AvroSchema::new(reader.to_owned()),
            layout: RowLayout::new(record_schema),
            max_record_bytes,
            writers: WriterSchemas::new("AVRO", registry),
        }
    }

    /// Reports waiting for the registry to `stats` (its `/health`).
    pub fn with_stats(mut self, stats: std::sync::Arc<crate::telemetry::Stats>) -> Self {
        self.writers.set_stats(stats);
        self
    }

    pub fn output_schema(&self) -> &SchemaRef {
        &self.layout.output_schema
    }

    /// Rows also carry these record headers as columns, after the record's fields.
    pub fn with_headers(mut self, headers: &[HeaderColumn]) -> Self {
        self.layout.set_headers(headers);
        self
    }

    /// Makes writer schema `id` known without asking the registry (benches, tests, a
    /// schema shipped beside the pipeline). Returns why it cannot be used, if so.
    pub fn add_writer(&self, id: u32, schema: &str) -> Option<String> {
        let writer = self.resolve(id, schema.to_owned());
        let unusable = writer.as_ref().err().cloned();
        self.writers.insert(id, writer);
        unusable
    }

    /// Fetches the writer schemas of `raw`'s records that are not known yet. Waits (with
    /// backoff) while the registry is unavailable, until it answers or `shutdown`.
    pub async fn prepare(
        &self,
        raw: &RawBatch,
        shutdown: &CancellationToken,
    ) -> Result<(), PrepareError> {
        let ids = raw.records().filter_map(|r| schema_id(r.payload?));
        self.writers
            .prepare(ids, shutdown, |id, schema| self.resolve(id, schema))
            .await
    }

    /// Whether the writer schema can be read into the reader schema.
    fn resolve(&self, id: u32, schema: String) -> Writer<AvroSchema> {
        let writer = AvroSchema::new(schema);
        match self.new_decoder(&[(id, &writer)], 1) {
            Ok(_) => Ok(writer),
            Err(e) => Err(format!(
                "writer schema id {id} cannot be read as the declared schema: {e}"
            )),
        }
    }

    fn new_decoder(
        &self,
        writers: &[(u32, &AvroSchema)],
        rows: usize,
    ) -> Result<Decoder, ArrowError> {
        let mut store = SchemaStore::new_with_type(FingerprintAlgorithm::Id);
        for (id, schema) in writers {
            store
                .set(Fingerprint::Id(*id), (*schema).clone())
                .map_err(|e| ArrowError::SchemaError(e.to_string()))?;
        }
        ReaderBuilder::new()
            .with_batch_size(rows.max(1))
            .with_reader_schema(self.reader.clone())
            .with_writer_schema_store(store)
            .build_decoder()
    }

    /// Decodes a batch whose writer schemas [`Self::prepare`] fetched. Errors are internal,
    /// never caused by bad input.
    pub fn decode(&self, raw: &RawBatch) -> Result<Batch, ArrowError> {
        let mut decoded = Decoded::new(&raw.provenance.tp, raw.len());
        let writers = self.writers.read();
        let mut candidates: Vec<(RawRecord<'_>, &[u8], u32)> = Vec::with_capacity(raw.len());
        for record in raw.records() {
            match self.screen(&record, &writers) {
                Ok((payload, id)) => candidates.push((record, payload, id)),
                Err(reason) => decoded.reject(&record, reason),
            }
        }
        let mut ids: Vec<u32> = candidates.iter().map(|c| c.2).collect();
        ids.sort_unstable();
        ids.dedup();
        let usable: Vec<(u32, &AvroSchema)> = ids
            .iter()
            .filter_map(|id| match writers.get(id) {
                Some(Ok(schema)) => Some((*id, schema)),
                _ => None,
            })
            .collect();
        match self.decode_all(&candidates, &usable)? {
            Some(parts) => {
                decoded.parts = parts;
                decoded.good.extend(candidates.iter().map(|c| c.0));
            }
            None => {
                for (record, payload, id) in &candidates {
                    let schema = usable
                        .iter()
                        .filter(|(i, _)| i == id)
                        .copied()
                        .collect::<Vec<_>>();
                    match self.decode_all(&[(*record, payload, *id)], &schema)? {
                        Some(parts) => {
                            decoded.parts.extend(parts);
                            decoded.good.push(*record);
                        }
                        None => {
                            let reason = self.reason(payload, &schema);
                            decoded.reject(record, (DeadLetterKind::MalformedAvro, reason));
                        }
                    }
                }
            }
        }
        self.layout.finish(decoded, raw)
    }

    /// Checks that need no decoding: tombstone, size, framing, a usable writer schema.
    fn screen<'a>(
        &self,
        record: &RawRecord<'a>,
        writers: &HashMap<u32, Writer<AvroSchema>>,
    ) -> Result<(&'a [u8], u32), Rejected> {
        let payload = payload_within(record, self.max_record_bytes)?;
        let id = schema_id(payload).ok_or_else(|| {
            (
                DeadLetterKind::NotFramed,
                "not in the Confluent wire format (magic byte 0 and a 4-byte schema id)".to_owned(),
            )
        })?;
        match writers.get(&id) {
            Some(Ok(_)) => Ok((payload, id)),
            Some(Err(reason)) => Err((DeadLetterKind::UnknownSchema, reason.clone())),
            None => Err((
                DeadLetterKind::UnknownSchema,
                format!("schema id {id} was not fetched"),
            )),
        }
    }

    /// The records through one decoder, in order; `None` if any record fails.
    fn decode_all(
        &self,
        records: &[(RawRecord<'_>, &[u8], u32)],
        writers: &[(u32, &AvroSchema)],
    ) -> Result<Option<Vec<RecordBatch>>, ArrowError> {
        let mut decoder = self.new_decoder(writers, records.len())?;
        let mut parts = Vec::new();
        for (_, payload, _) in records {
            if feed(&mut decoder, payload, &mut parts).is_err() {
                return Ok(None);
            }
        }
        match decoder.flush() {
            Ok(Some(batch)) => parts.push(batch),
            Ok(None) => {}
            Err(_) => return Ok(None),
        }
        let rows: usize = parts.iter().map(RecordBatch::num_rows).sum();
        if rows != records.len() {
            return Ok(None);
        }
        // Each part has the reader schema's columns; the declared schema's field
        // metadata is what the rest of the pipeline sees.
        parts
            .into_iter()
            .map(|part| {
                RecordBatch::try_new(self.layout.record_schema.clone(), part.columns().to_vec())
            })
            .collect::<Result<Vec<_>, _>>()
            .map(Some)
    }

    /// Why one record fails on its own.
    fn reason(&self, payload: &[u8], writers: &[(u32, &AvroSchema)]) -> String {
        let mut parts = Vec::new();
        let error = match self.new_decoder(writers, 1) {
            Ok(mut decoder) => match feed(&mut decoder, payload, &mut parts) {
                Err(e) => e,
                Ok(()) => match decoder.flush() {
                    Err(e) => e.to_string(),
                    Ok(_) => "the body does not match its writer schema".to_owned(),
                },
            },
            Err(e) => e.to_string(),
        };
        // A second prefix expected where the record should have ended.
        if error.contains("Missing magic bytes") {
            return "not valid Avro for its writer schema: bytes left after the end of the datum"
                .to_owned();
        }
        format!("not valid Avro for its writer schema: {error}")
    }
}

/// Feeds one whole record to `decoder`, flushing into `parts` when it switches writer
/// schema or fills; fails if the record is not exactly one datum.
fn feed(decoder: &mut Decoder, payload: &[u8], parts: &mut Vec<RecordBatch>) -> Result<(), String> {
    let mut rest = payload;
    while !rest.is_empty() {
        let read = decoder.decode(rest).map_err(|e| e.to_string())?;
        rest = &rest[read..];
        if decoder.batch_is_full() {
            if let Some(batch) = decoder.flush().map_err(|e| e.to_string())? {
                parts.push(batch);
            }
        } else if read == 0 {
            return Err("the record ends inside its body (truncated)".into());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests;

//! Avro records in the Confluent wire format -> Arrow rows, with `arrow-avro`.
//!
//! Each record is a magic byte `0`, the writer schema's 4-byte big-endian registry id and
//! the Avro body. The declared `.avsc` schema is the reader schema: every writer schema is
//! resolved to it by Avro's rules (fields added with defaults, fields removed, numeric
//! promotions), so every batch has the declared columns whatever mix of writer versions
//! it holds.
//!
//! Writer schemas are fetched from the registry by id, once each, in [`AvroDecoder::prepare`]
//! (async, before the batch is decoded): while the registry cannot be reached it waits and
//! asks again with backoff, so the stream pauses there (nothing past the batch is
//! decoded or committed) instead of sending records to the dead letters. An id the
//! registry does not have, or a writer schema that cannot be read into the reader schema,
//! is final: its records go to the dead letters with the id and the reason.
//!
//! [`AvroDecoder::decode`] feeds the whole batch to one decoder (the fast path). If any
//! record fails there, each record is decoded on its own so that only the bad ones become
//! dead letters.

use std::collections::HashMap;
use std::sync::RwLock;

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use arrow::error::ArrowError;
use arrow_avro::reader::{Decoder, ReaderBuilder};
use arrow_avro::schema::{AvroSchema, Fingerprint, FingerprintAlgorithm, SchemaStore};
use tokio_util::sync::CancellationToken;

use super::{finish, payload_within, Decoded, Rejected};
use crate::batch::{Batch, DeadLetterKind, RawBatch, RawRecord};
use crate::config::{HeaderColumn, HeaderType};
use crate::schema::with_provenance;
use crate::schema_registry::{patiently, Gave, RegistryError, SchemaRegistry};

/// The Confluent wire format's header: magic byte and schema id.
const HEADER: usize = 5;

/// Why preparing a batch failed (the run stops; nothing of the batch is committed).
#[derive(Debug, thiserror::Error)]
pub enum PrepareError {
    #[error("decode.schema_registry: {0}")]
    Registry(#[source] RegistryError),
    #[error("stopped while waiting for the schema registry")]
    Cancelled,
}

/// A writer schema as far as this decoder is concerned.
#[derive(Debug, Clone)]
enum Writer {
    Usable(AvroSchema),
    /// Records with this id are dead letters, for this reason.
    Unusable(String),
}

/// Decodes Confluent-framed Avro records against one reader schema.
#[derive(Debug)]
pub struct AvroDecoder {
    reader: AvroSchema,
    record_schema: SchemaRef,
    output_schema: SchemaRef,
    headers: Vec<HeaderType>,
    max_record_bytes: usize,
    holds_dates: bool,
    registry: SchemaRegistry,
    writers: RwLock<HashMap<u32, Writer>>,
    /// Where `/health` learns that the decoder waits for the registry.
    stats: std::sync::Arc<crate::telemetry::Stats>,
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
            output_schema: with_provenance(&record_schema),
            headers: Vec::new(),
            holds_dates: super::holds_dates(&record_schema),
            record_schema,
            max_record_bytes,
            registry,
            writers: RwLock::new(HashMap::new()),
            stats: Default::default(),
        }
    }

    /// Reports waiting for the registry to `stats` (its `/health`).
    pub fn with_stats(mut self, stats: std::sync::Arc<crate::telemetry::Stats>) -> Self {
        self.stats = stats;
        self
    }

    pub fn output_schema(&self) -> &SchemaRef {
        &self.output_schema
    }

    /// Rows also carry these record headers as columns, after the record's fields.
    pub fn with_headers(mut self, headers: &[HeaderColumn]) -> Self {
        self.output_schema = crate::schema::row_schema(&self.record_schema, headers);
        self.headers = headers.iter().map(HeaderColumn::kind).collect();
        self
    }

    /// Makes writer schema `id` known without asking the registry (benches, tests, a
    /// schema shipped beside the pipeline). Returns why it cannot be used, if so.
    pub fn add_writer(&self, id: u32, schema: &str) -> Option<String> {
        let writer = self.resolve(id, schema.to_owned());
        let unusable = match &writer {
            Writer::Unusable(reason) => Some(reason.clone()),
            Writer::Usable(_) => None,
        };
        self.writers
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id, writer);
        unusable
    }

    fn writers(&self) -> std::sync::RwLockReadGuard<'_, HashMap<u32, Writer>> {
        self.writers.read().unwrap_or_else(|p| p.into_inner())
    }

    /// Fetches the writer schemas of `raw`'s records that are not known yet. Waits (with
    /// backoff) while the registry is unavailable, until it answers or `shutdown`.
    pub async fn prepare(
        &self,
        raw: &RawBatch,
        shutdown: &CancellationToken,
    ) -> Result<(), PrepareError> {
        let mut missing: Vec<u32> = {
            let writers = self.writers();
            raw.records()
                .filter_map(|r| schema_id(r.payload?))
                .filter(|id| !writers.contains_key(id))
                .collect()
        };
        missing.sort_unstable();
        missing.dedup();
        for id in missing {
            let writer = self.fetch(id, shutdown).await?;
            if let Writer::Unusable(reason) = &writer {
                tracing::warn!(schema_id = id, reason = %reason, "records with this writer schema go to the dead letters");
            }
            self.writers
                .write()
                .unwrap_or_else(|p| p.into_inner())
                .insert(id, writer);
        }
        Ok(())
    }

    async fn fetch(&self, id: u32, shutdown: &CancellationToken) -> Result<Writer, PrepareError> {
        let what = format!("writer schema id {id}");
        match patiently(&what, shutdown, &self.stats, || {
            self.registry.schema_by_id(id)
        })
        .await
        {
            Ok(registered) if registered.schema_type != "AVRO" => Ok(Writer::Unusable(format!(
                "schema id {id} is a {} schema, not Avro",
                registered.schema_type
            ))),
            Ok(registered) => Ok(self.resolve(id, registered.schema)),
            Err(Gave::Up(e @ RegistryError::NotFound { .. })) => {
                Ok(Writer::Unusable(e.to_string()))
            }
            Err(Gave::Up(e)) => Err(PrepareError::Registry(e)),
            Err(Gave::Cancelled) => Err(PrepareError::Cancelled),
        }
    }

    /// Whether the writer schema can be read into the reader schema.
    fn resolve(&self, id: u32, schema: String) -> Writer {
        let writer = AvroSchema::new(schema);
        match self.new_decoder(&[(id, &writer)], 1) {
            Ok(_) => Writer::Usable(writer),
            Err(e) => Writer::Unusable(format!(
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
        let writers = self.writers();
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
                Some(Writer::Usable(schema)) => Some((*id, schema)),
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
        finish(
            decoded,
            raw,
            &self.record_schema,
            &self.output_schema,
            &self.headers,
            self.holds_dates,
        )
    }

    /// Checks that need no decoding: tombstone, size, framing, a usable writer schema.
    fn screen<'a>(
        &self,
        record: &RawRecord<'a>,
        writers: &HashMap<u32, Writer>,
    ) -> Result<(&'a [u8], u32), Rejected> {
        let payload = payload_within(record, self.max_record_bytes)?;
        let id = schema_id(payload).ok_or_else(|| {
            (
                DeadLetterKind::NotFramed,
                "not in the Confluent wire format (magic byte 0 and a 4-byte schema id)".to_owned(),
            )
        })?;
        match writers.get(&id) {
            Some(Writer::Usable(_)) => Ok((payload, id)),
            Some(Writer::Unusable(reason)) => Err((DeadLetterKind::UnknownSchema, reason.clone())),
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
            .map(|part| RecordBatch::try_new(self.record_schema.clone(), part.columns().to_vec()))
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

/// The schema id of a Confluent-framed record.
fn schema_id(payload: &[u8]) -> Option<u32> {
    match payload {
        [0, a, b, c, d, ..] if payload.len() >= HEADER => {
            Some(u32::from_be_bytes([*a, *b, *c, *d]))
        }
        _ => None,
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

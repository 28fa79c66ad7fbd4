//! Rows as Avro messages in the Confluent wire format (magic byte, schema id, body), for
//! a `kafka` sink with `format: avro`.
//!
//! The schema is derived from the output columns (arrow-avro's Arrow -> Avro mapping,
//! under the configured record name) and registered, or a pinned version is used
//! ([`super::subject`]); the start fails if the columns do not fit it.

use std::collections::HashMap;
use std::sync::Arc;

use arrow::array::RecordBatch;
use arrow::datatypes::{Schema, SchemaRef};
use arrow_avro::schema::{
    AvroSchema, FingerprintStrategy, AVRO_NAMESPACE_METADATA_KEY, AVRO_NAME_METADATA_KEY,
    SCHEMA_METADATA_KEY,
};
use arrow_avro::writer::{format::AvroSoeFormat, WriterBuilder};
use tokio_util::sync::CancellationToken;

use super::subject::SubjectSchema;
use super::SinkError;
use crate::config::KafkaSinkConfig;

/// The Avro side of a `kafka` sink.
#[derive(Debug, Clone)]
pub struct AvroOutput {
    sink: String,
    schema: SubjectSchema,
    /// The output columns (projected).
    columns: SchemaRef,
    /// After [`Self::prepare`]: the schema id, and the columns' schema carrying the Avro
    /// schema the encoder writes.
    ready: Option<(u32, SchemaRef)>,
}

fn avro_error(sink: &str, message: String) -> SinkError {
    SinkError::Avro {
        sink: sink.to_owned(),
        message,
    }
}

impl AvroOutput {
    /// `columns`: the schema of the rows the sink writes (after `columns:` projection).
    pub fn new(sink: &str, config: &KafkaSinkConfig, columns: &Schema) -> Result<Self, SinkError> {
        let derive = || {
            let full = config.record_full_name();
            let (namespace, name) = full.rsplit_once('.').unwrap_or(("", &full));
            let mut metadata =
                HashMap::from([(AVRO_NAME_METADATA_KEY.to_owned(), name.to_owned())]);
            if !namespace.is_empty() {
                metadata.insert(AVRO_NAMESPACE_METADATA_KEY.to_owned(), namespace.to_owned());
            }
            let named = Schema::new(columns.fields().clone()).with_metadata(metadata);
            AvroSchema::try_from(&named)
                .map(|schema| schema.json_string)
                .map_err(|e| e.to_string())
        };
        Ok(AvroOutput {
            sink: sink.to_owned(),
            schema: SubjectSchema::new(sink, config, "AVRO", derive, avro_error)?,
            columns: Arc::new(Schema::new(columns.fields().clone())),
            ready: None,
        })
    }

    fn error(&self, message: String) -> SinkError {
        avro_error(&self.sink, message)
    }

    /// Registers the schema (or fetches the pinned version) and checks the columns fit it.
    pub async fn prepare(
        &mut self,
        shutdown: &CancellationToken,
        stats: &crate::telemetry::Stats,
    ) -> Result<(), SinkError> {
        let (id, schema) = self.schema.resolve(shutdown, stats, avro_error).await?;
        let metadata = HashMap::from([(SCHEMA_METADATA_KEY.to_owned(), schema)]);
        let with_schema = Arc::new(self.columns.as_ref().clone().with_metadata(metadata));
        // The columns must fit the schema (a pinned version may not).
        self.encoder(id, &with_schema)
            .and_then(|mut encoder| {
                encoder
                    .encode(&RecordBatch::new_empty(with_schema.clone()))
                    .map_err(|e| e.to_string())
            })
            .map_err(|e| {
                self.error(format!(
                    "the output columns do not fit subject `{}`'s schema id {id}: {e}",
                    self.schema.subject
                ))
            })?;
        tracing::info!(sink = %self.sink, subject = %self.schema.subject, schema_id = id, "writing Avro");
        self.ready = Some((id, with_schema));
        Ok(())
    }

    fn encoder(&self, id: u32, schema: &SchemaRef) -> Result<arrow_avro::writer::Encoder, String> {
        WriterBuilder::new(schema.as_ref().clone())
            .with_fingerprint_strategy(FingerprintStrategy::Id(id))
            .build_encoder::<AvroSoeFormat>()
            .map_err(|e| e.to_string())
    }

    /// One framed message per row of `rows` (the projected output columns).
    pub fn encode(&self, rows: &RecordBatch) -> Result<Vec<Vec<u8>>, SinkError> {
        let (id, schema) = self
            .ready
            .as_ref()
            .ok_or_else(|| self.error("encoding before the schema was registered".into()))?;
        let rows = RecordBatch::try_new(schema.clone(), rows.columns().to_vec())?;
        let mut encoder = self.encoder(*id, schema).map_err(|e| self.error(e))?;
        encoder
            .encode(&rows)
            .map_err(|e| self.error(e.to_string()))?;
        let encoded = encoder.flush();
        (0..encoded.len())
            .map(|row| {
                encoded
                    .row(row)
                    .map(|bytes| bytes.to_vec())
                    .map_err(|e| self.error(e.to_string()))
            })
            .collect()
    }
}

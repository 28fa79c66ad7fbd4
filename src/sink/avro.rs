//! Rows as Avro messages in the Confluent wire format (magic byte, schema id, body), for
//! a `kafka` sink with `format: avro`.
//!
//! The schema is derived from the output columns (arrow-avro's Arrow -> Avro mapping,
//! under the configured record name) and registered under the sink's subject when the
//! sink starts (the registry answers with the existing id when it has the schema
//! already). With `auto_register: false` the subject's pinned version is used as it is,
//! and the start fails if the columns do not fit it. While the registry cannot be
//! reached the sink waits (the stream pauses) until it answers or the run stops.

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

use super::SinkError;
use crate::config::KafkaSinkConfig;
use crate::schema_registry::{patiently, Gave, SchemaRegistry};

/// Where the writer schema comes from.
#[derive(Debug, Clone)]
enum Source {
    /// Derived from the columns and registered.
    Register { schema: String },
    /// A version of the subject (`latest` or a number), used as it is.
    Pinned { version: String },
}

/// The Avro side of a `kafka` sink.
#[derive(Debug, Clone)]
pub struct AvroOutput {
    sink: String,
    subject: String,
    registry: SchemaRegistry,
    source: Source,
    /// The output columns (projected).
    columns: SchemaRef,
    /// After [`Self::prepare`]: the schema id, and the columns' schema carrying the Avro
    /// schema the encoder writes.
    ready: Option<(u32, SchemaRef)>,
}

impl AvroOutput {
    /// `columns`: the schema of the rows the sink writes (after `columns:` projection).
    pub fn new(sink: &str, config: &KafkaSinkConfig, columns: &Schema) -> Result<Self, SinkError> {
        let avro_error = |message: String| SinkError::Avro {
            sink: sink.to_owned(),
            message,
        };
        let registry = config
            .schema_registry
            .as_ref()
            .ok_or_else(|| avro_error("no schema_registry".into()))?;
        let registry = SchemaRegistry::new(registry).map_err(|source| SinkError::Registry {
            sink: sink.to_owned(),
            source,
        })?;
        let source = if config.auto_register {
            let full = config.record_full_name();
            let (namespace, name) = full.rsplit_once('.').unwrap_or(("", &full));
            let mut metadata =
                HashMap::from([(AVRO_NAME_METADATA_KEY.to_owned(), name.to_owned())]);
            if !namespace.is_empty() {
                metadata.insert(AVRO_NAMESPACE_METADATA_KEY.to_owned(), namespace.to_owned());
            }
            let named = Schema::new(columns.fields().clone()).with_metadata(metadata);
            let schema = AvroSchema::try_from(&named)
                .map_err(|e| avro_error(format!("the output columns have no Avro form: {e}")))?;
            Source::Register {
                schema: schema.json_string,
            }
        } else {
            Source::Pinned {
                version: config
                    .schema_version
                    .clone()
                    .unwrap_or_else(|| "latest".into()),
            }
        };
        Ok(AvroOutput {
            sink: sink.to_owned(),
            subject: config.subject(),
            registry,
            source,
            columns: Arc::new(Schema::new(columns.fields().clone())),
            ready: None,
        })
    }

    fn error(&self, message: String) -> SinkError {
        SinkError::Avro {
            sink: self.sink.clone(),
            message,
        }
    }

    /// Registers the schema (or fetches the pinned version) and checks the columns fit it.
    pub async fn prepare(
        &mut self,
        shutdown: &CancellationToken,
        stats: &crate::telemetry::Stats,
    ) -> Result<(), SinkError> {
        let what = format!("subject `{}`", self.subject);
        let found = match &self.source {
            Source::Register { schema } => patiently(&what, shutdown, stats, || {
                self.registry.register(&self.subject, schema, "AVRO")
            })
            .await
            .map(|id| (id, schema.clone())),
            Source::Pinned { version } => patiently(&what, shutdown, stats, || {
                self.registry.subject_version(&self.subject, version)
            })
            .await
            .and_then(|registered| match registered.id {
                Some(id) => Ok((id, registered.schema)),
                None => Err(Gave::Up(crate::schema_registry::RegistryError::Refused {
                    url: self.registry.url().to_owned(),
                    status: 200,
                    message: "the answer has no schema id".into(),
                })),
            }),
        };
        let (id, schema) = match found {
            Ok(found) => found,
            Err(Gave::Up(source)) => {
                return Err(SinkError::Registry {
                    sink: self.sink.clone(),
                    source,
                })
            }
            Err(Gave::Cancelled) => {
                return Err(self.error("stopped while waiting for the schema registry".into()))
            }
        };
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
                    self.subject
                ))
            })?;
        tracing::info!(sink = %self.sink, subject = %self.subject, schema_id = id, "writing Avro");
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

//! The schema a `kafka` sink writes with, as the schema registry holds it: the schema
//! derived from the output columns, registered under the sink's subject when the sink
//! starts, or (`auto_register: false`) a pinned version of the subject used as it is.
//! Shared by the Avro and Protobuf outputs. While the registry cannot be reached the sink
//! waits (the stream pauses) until it answers or the run stops.

use tokio_util::sync::CancellationToken;

use super::SinkError;
use crate::config::KafkaSinkConfig;
use crate::schema_registry::{patiently, Gave, RegistryError, SchemaRegistry};

/// Where the writer schema comes from.
#[derive(Debug, Clone)]
enum Source {
    /// Derived from the columns and registered.
    Register { schema: String },
    /// A version of the subject (`latest` or a number), used as it is.
    Pinned { version: String },
}

/// A sink's subject and the schema it writes with.
#[derive(Debug, Clone)]
pub(crate) struct SubjectSchema {
    sink: String,
    pub(crate) subject: String,
    registry: SchemaRegistry,
    /// The registry's `schemaType`: `AVRO` or `PROTOBUF`.
    schema_type: &'static str,
    source: Source,
}

impl SubjectSchema {
    /// `derive` gives the schema text to register (called only with `auto_register`);
    /// `error` wraps a message as the format's sink error.
    pub(crate) fn new(
        sink: &str,
        config: &KafkaSinkConfig,
        schema_type: &'static str,
        derive: impl FnOnce() -> Result<String, String>,
        error: fn(&str, String) -> SinkError,
    ) -> Result<Self, SinkError> {
        let registry = config
            .schema_registry
            .as_ref()
            .ok_or_else(|| error(sink, "no schema_registry".into()))?;
        let registry = SchemaRegistry::new(registry).map_err(|source| SinkError::Registry {
            sink: sink.to_owned(),
            source,
        })?;
        let source = if config.auto_register {
            Source::Register {
                schema: derive().map_err(|e| {
                    let format = if schema_type == "AVRO" {
                        "Avro"
                    } else {
                        "Protobuf"
                    };
                    error(
                        sink,
                        format!("the output columns have no {format} form: {e}"),
                    )
                })?,
            }
        } else {
            Source::Pinned {
                version: config
                    .schema_version
                    .clone()
                    .unwrap_or_else(|| "latest".into()),
            }
        };
        Ok(SubjectSchema {
            sink: sink.to_owned(),
            subject: config.subject(),
            registry,
            schema_type,
            source,
        })
    }

    /// Registers the derived schema, or fetches the pinned version: its id and text.
    pub(crate) async fn resolve(
        &self,
        shutdown: &CancellationToken,
        stats: &crate::telemetry::Stats,
        error: fn(&str, String) -> SinkError,
    ) -> Result<(u32, String), SinkError> {
        let what = format!("subject `{}`", self.subject);
        let found = match &self.source {
            Source::Register { schema } => patiently(&what, shutdown, stats, || {
                self.registry
                    .register(&self.subject, schema, self.schema_type)
            })
            .await
            .map(|id| (id, schema.clone())),
            Source::Pinned { version } => patiently(&what, shutdown, stats, || {
                self.registry.subject_version(&self.subject, version)
            })
            .await
            .and_then(|registered| match registered.id {
                Some(id) if registered.schema_type == self.schema_type => {
                    Ok((id, registered.schema))
                }
                _ => Err(Gave::Up(RegistryError::Refused {
                    url: self.registry.url().to_owned(),
                    status: 200,
                    message: format!(
                        "subject `{}` version {version} is not a {} schema with an id",
                        self.subject, self.schema_type
                    ),
                })),
            }),
        };
        match found {
            Ok(found) => Ok(found),
            Err(Gave::Up(source)) => Err(SinkError::Registry {
                sink: self.sink.clone(),
                source,
            }),
            Err(Gave::Cancelled) => Err(error(
                &self.sink,
                "stopped while waiting for the schema registry".into(),
            )),
        }
    }
}

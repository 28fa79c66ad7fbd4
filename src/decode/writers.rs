//! Writer schemas by registry id, for the formats that carry one in each record's
//! Confluent framing (Avro, Protobuf): fetched once per id, before a batch is decoded.
//!
//! While the registry cannot be reached, [`WriterSchemas::prepare`] waits and asks again
//! with backoff, so the stream pauses there (nothing past the batch is decoded or
//! committed) instead of sending records to the dead letters. An id the registry does not
//! have, a schema of another type, or one the format cannot read into the declared schema
//! is final: the id is remembered as unusable with the reason, and its records become
//! dead letters naming it.

use std::collections::HashMap;
use std::sync::{Arc, RwLock, RwLockReadGuard};

use tokio_util::sync::CancellationToken;

use crate::schema_registry::{patiently, Gave, RegistryError, SchemaRegistry};
use crate::telemetry::Stats;

/// Why preparing a batch failed (the run stops; nothing of the batch is committed).
#[derive(Debug, thiserror::Error)]
pub enum PrepareError {
    #[error("decode.schema_registry: {0}")]
    Registry(#[source] RegistryError),
    #[error("stopped while waiting for the schema registry")]
    Cancelled,
}

/// A writer schema as the format reads it, or why its records are dead letters.
pub(crate) type Writer<W> = Result<W, String>;

/// The writer schemas seen so far, by id.
#[derive(Debug)]
pub(crate) struct WriterSchemas<W> {
    /// The registry's `schemaType` this format reads (`AVRO`, `PROTOBUF`).
    schema_type: &'static str,
    registry: SchemaRegistry,
    known: RwLock<HashMap<u32, Writer<W>>>,
    /// Where `/health` learns that the decoder waits for the registry.
    stats: Arc<Stats>,
}

impl<W> WriterSchemas<W> {
    pub(crate) fn new(schema_type: &'static str, registry: SchemaRegistry) -> Self {
        WriterSchemas {
            schema_type,
            registry,
            known: RwLock::new(HashMap::new()),
            stats: Default::default(),
        }
    }

    pub(crate) fn set_stats(&mut self, stats: Arc<Stats>) {
        self.stats = stats;
    }

    pub(crate) fn read(&self) -> RwLockReadGuard<'_, HashMap<u32, Writer<W>>> {
        self.known.read().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn insert(&self, id: u32, writer: Writer<W>) {
        self.known
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id, writer);
    }

    /// Fetches the schemas among `ids` not known yet and reads each with `resolve(id,
    /// schema text)`. Waits (with backoff) while the registry is unavailable, until it
    /// answers or `shutdown`.
    pub(crate) async fn prepare(
        &self,
        ids: impl Iterator<Item = u32>,
        shutdown: &CancellationToken,
        resolve: impl Fn(u32, String) -> Writer<W>,
    ) -> Result<(), PrepareError> {
        let mut missing: Vec<u32> = {
            let known = self.read();
            ids.filter(|id| !known.contains_key(id)).collect()
        };
        missing.sort_unstable();
        missing.dedup();
        for id in missing {
            let writer = match self.fetch(id, shutdown).await? {
                Ok(schema) => resolve(id, schema),
                Err(reason) => Err(reason),
            };
            if let Err(reason) = &writer {
                tracing::warn!(schema_id = id, reason = %reason, "records with this writer schema go to the dead letters");
            }
            self.insert(id, writer);
        }
        Ok(())
    }

    /// Schema `id`'s text, or why it is unusable.
    async fn fetch(
        &self,
        id: u32,
        shutdown: &CancellationToken,
    ) -> Result<Result<String, String>, PrepareError> {
        let what = format!("writer schema id {id}");
        match patiently(&what, shutdown, &self.stats, || {
            self.registry.schema_by_id(id)
        })
        .await
        {
            Ok(registered) if registered.schema_type != self.schema_type => Ok(Err(format!(
                "schema id {id} is a {} schema, not {}",
                registered.schema_type, self.schema_type
            ))),
            Ok(registered) => Ok(Ok(registered.schema)),
            Err(Gave::Up(e @ RegistryError::NotFound { .. })) => Ok(Err(e.to_string())),
            Err(Gave::Up(e)) => Err(PrepareError::Registry(e)),
            Err(Gave::Cancelled) => Err(PrepareError::Cancelled),
        }
    }
}

/// The schema id of a Confluent-framed record (magic byte 0, 4-byte big-endian id).
pub(crate) fn schema_id(payload: &[u8]) -> Option<u32> {
    match payload {
        [0, a, b, c, d, ..] => Some(u32::from_be_bytes([*a, *b, *c, *d])),
        _ => None,
    }
}

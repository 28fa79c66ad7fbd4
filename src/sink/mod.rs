//! Sinks: where decoded batches go, and the messages the runtime sends them.
//!
//! Each sink runs as its own task reading [`SinkMessage`]s from a bounded channel (a slow
//! sink slows the pipeline down instead of growing memory) and acknowledges each batch
//! to the [`AckTracker`](crate::ack::AckTracker) once the batch is durable in it: a
//! Parquet file committed, a Kafka delivery report received. A [`Flush`] asks a sink to
//! make everything it holds for some partitions durable now (partitions revoked,
//! shutdown). Sinks are a closed set, so they are plain types, not trait objects.

pub mod alert;
pub mod kafka;
pub mod parquet;

use std::path::PathBuf;
use std::sync::Arc;

use crate::batch::{Batch, TopicPartition};

/// What a sink task receives.
#[derive(Debug, Clone)]
pub enum SinkMessage {
    Batch(Arc<Batch>),
    Flush(Flush),
}

/// Make everything held for `partitions` (all when `None`) durable now.
#[derive(Debug, Clone)]
pub struct Flush {
    pub partitions: Option<Vec<TopicPartition>>,
    /// The partitions are leaving this consumer: forget their state afterwards.
    pub revoke: bool,
}

impl Flush {
    pub fn all() -> Self {
        Flush {
            partitions: None,
            revoke: false,
        }
    }
}

/// Why a sink stopped. Any of these stops the pipeline without committing offsets past
/// what is durable; the batches are read again on restart.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    #[error("{sink}: {message}")]
    Setup { sink: String, message: String },
    #[error("{sink}: {}: {source}", path.display())]
    Io {
        sink: String,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("writing Parquet: {0}")]
    Parquet(#[from] ::parquet::errors::ParquetError),
    #[error("building Arrow data: {0}")]
    Arrow(#[from] arrow::error::ArrowError),
    #[error("{sink}: creating the Kafka producer: {source}")]
    Producer {
        sink: String,
        source: rdkafka::error::KafkaError,
    },
    #[error("{sink}: delivery to topic `{topic}` failed after librdkafka's retries: {source}")]
    Delivery {
        sink: String,
        topic: String,
        source: rdkafka::error::KafkaError,
    },
    #[error("{sink}: a delivery task ended abnormally: {message}")]
    Task { sink: String, message: String },
}

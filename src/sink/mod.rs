//! Sinks: where decoded batches go, and the messages the runtime sends them.
//!
//! Each sink runs as its own task reading [`SinkMessage`]s from a bounded channel (a slow
//! sink slows the pipeline down instead of growing memory) and acknowledges each batch
//! to the [`AckTracker`](crate::ack::AckTracker) once the batch is durable in it: a
//! Parquet file committed, a Kafka delivery report received. A [`Flush`] asks a sink to
//! make everything it holds for some partitions durable now (partitions revoked,
//! shutdown). Sinks are a closed set, so they are plain types, not trait objects.

pub mod alert;
pub mod avro;
pub mod delta;
pub mod dictionary;
pub mod kafka;
pub mod parquet;
pub mod plan;
pub mod protobuf;
mod rolling;
mod subject;

pub use plan::Plan;

use std::path::PathBuf;
use std::sync::Arc;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use self::kafka::{Encoding, KafkaSink};
use self::parquet::{ParquetInput, ParquetSink};
use crate::ack::AckTracker;
use crate::batch::{Batch, Flush};
use crate::config::SinkConfig;
use crate::telemetry::Stats;

/// What a sink task receives.
#[derive(Debug, Clone)]
pub enum SinkMessage {
    Batch(Arc<Batch>),
    Flush(Flush),
}

/// Why a sink stopped. Any of these stops the pipeline without committing offsets past
/// what is durable; the batches are read again on restart.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    #[error("{sink}: partition_by")]
    Partition {
        sink: String,
        #[source]
        source: parquet::partition::PartitionKeyError,
    },
    #[error("{sink}: {}: {source}", path.display())]
    Io {
        sink: String,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{sink}: storage")]
    Storage {
        sink: String,
        #[source]
        source: crate::storage::StorageError,
    },
    #[error("{sink}")]
    Delta {
        sink: String,
        #[source]
        source: delta::DeltaError,
    },
    #[error("{sink}: commit refused")]
    Fenced {
        sink: String,
        #[source]
        source: parquet::commit::CommitError,
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
    #[error("{sink}: schema registry")]
    Registry {
        sink: String,
        #[source]
        source: crate::schema_registry::RegistryError,
    },
    #[error("{sink}: Avro: {message}")]
    Avro { sink: String, message: String },
    #[error("{sink}: Protobuf: {message}")]
    Protobuf { sink: String, message: String },
    #[error("{sink}: transaction on topic `{topic}`")]
    Transaction {
        sink: String,
        topic: String,
        #[source]
        source: kafka::transaction::TransactionError,
    },
    #[error("{sink}: a delivery task ended abnormally: {message}")]
    Task { sink: String, message: String },
    #[error(
        "{sink}: stopped with {batches} batch(es) for topic `{topic}` not yet delivered \
         (shutdown grace over); their offsets are not committed and a restart sends them again"
    )]
    Interrupted {
        sink: String,
        topic: String,
        batches: usize,
    },
}

/// One running sink.
pub enum Sink {
    Parquet(Box<ParquetSink>),
    Kafka(Box<KafkaSink>),
    Delta(Box<delta::DeltaSink>),
}

impl Sink {
    /// Writes what arrives on `input` until it closes. After `shutdown`, a sink whose
    /// outside system stops answering gives up (see `kafka::SHUTDOWN_GRACE`).
    pub async fn run(
        self,
        input: mpsc::Receiver<SinkMessage>,
        shutdown: CancellationToken,
    ) -> Result<(), SinkError> {
        match self {
            Sink::Parquet(sink) => sink.run(input).await,
            Sink::Kafka(sink) => sink.run(input, shutdown).await,
            Sink::Delta(sink) => sink.run(input).await,
        }
    }
}

/// Builds every sink of `plan`, in acknowledgement order: the outputs, then the
/// Parquet and Kafka dead letters. `writer`: who writes the Parquet files (`None`: the
/// live pipeline; a backfill's run id). `link`: the group consumer's side of an
/// exactly-once sink (`None` outside a group run: such a sink then writes at-least-once).
pub fn build(
    plan: &Plan,
    writer: Option<String>,
    link: Option<&Arc<crate::exactly_once::Link>>,
    tracker: &Arc<AckTracker>,
    stats: &Arc<Stats>,
) -> Result<Vec<Sink>, SinkError> {
    let producer = |brokers: &Option<String>, properties| {
        plan::producer_config(&plan.default_brokers, brokers, properties)
    };
    let rows = &plan.rows;
    let parquet = |name: String, input, sink, schema| -> Result<Sink, SinkError> {
        Ok(Sink::Parquet(Box::new(ParquetSink::new(
            name,
            input,
            sink,
            &plan.storage,
            schema,
            writer.clone(),
            tracker.clone(),
            stats.clone(),
        )?)))
    };
    let mut sinks = Vec::with_capacity(plan.count());
    for (name, sink) in &plan.outputs {
        sinks.push(match sink {
            SinkConfig::Parquet(out) => {
                parquet(name.clone(), ParquetInput::Rows, out, rows.clone())?
            }
            SinkConfig::Delta(out) => Sink::Delta(Box::new(delta::DeltaSink::new(
                name.clone(),
                ParquetInput::Rows,
                out,
                &plan.storage,
                rows.clone(),
                &plan.pipeline,
                writer.clone(),
                tracker.clone(),
                stats.clone(),
            )?)),
            SinkConfig::Kafka(out) => {
                let index = |name: &str| rows.index_of(name).map_err(SinkError::from);
                let columns: Option<Vec<usize>> = match &out.columns {
                    Some(names) => Some(names.iter().map(|n| index(n)).collect::<Result<_, _>>()?),
                    None => None,
                };
                let key = out.key.as_deref().map(index).transpose()?;
                let headers = out
                    .headers
                    .iter()
                    .map(|(name, column)| Ok((name.clone(), index(column)?)))
                    .collect::<Result<Vec<_>, SinkError>>()?;
                let projected = match &columns {
                    Some(columns) => rows.project(columns)?,
                    None => rows.as_ref().clone(),
                };
                let registered = match out.format {
                    crate::config::OutputFormat::Json => None,
                    crate::config::OutputFormat::Avro => Some(Box::new(kafka::Registered::Avro(
                        avro::AvroOutput::new(name, out, &projected)?,
                    ))),
                    crate::config::OutputFormat::Protobuf => {
                        Some(Box::new(kafka::Registered::Protobuf(
                            protobuf::ProtobufOutput::new(name, out, &projected)?,
                        )))
                    }
                };
                let mut config = producer(&out.brokers, &out.properties);
                let link = match (out.exactly_once, link) {
                    (true, Some(link)) => {
                        if config.get("transactional.id").is_none() {
                            config.set("transactional.id", &link.transactional_id);
                        }
                        Some(link.clone())
                    }
                    (true, None) => {
                        tracing::info!(sink = %name, "exactly_once applies to `sluice run`: this run writes the topic at-least-once");
                        None
                    }
                    (false, _) => None,
                };
                Sink::Kafka(Box::new(KafkaSink::new(
                    name.clone(),
                    out.topic.clone(),
                    config,
                    link,
                    Encoding::Rows {
                        columns,
                        key,
                        headers,
                        alert: out.alert.clone(),
                        registered,
                    },
                    tracker.clone(),
                    stats.clone(),
                )?))
            }
        });
    }
    if let Some(out) = &plan.dead_letter_parquet {
        sinks.push(parquet(
            "dead_letter.parquet".into(),
            ParquetInput::DeadLetters,
            out,
            crate::dead_letter::schema(),
        )?);
    }
    if let Some(out) = &plan.dead_letter_delta {
        sinks.push(Sink::Delta(Box::new(delta::DeltaSink::new(
            "dead_letter.delta".into(),
            ParquetInput::DeadLetters,
            out,
            &plan.storage,
            crate::dead_letter::schema(),
            &plan.pipeline,
            writer.clone(),
            tracker.clone(),
            stats.clone(),
        )?)));
    }
    if let Some(out) = &plan.dead_letter_kafka {
        sinks.push(Sink::Kafka(Box::new(KafkaSink::new(
            "dead_letter.kafka".into(),
            out.topic.clone(),
            producer(&out.brokers, &out.properties),
            None,
            Encoding::DeadLetters {
                max_payload_bytes: usize::try_from(out.max_payload_bytes.as_u64())
                    .unwrap_or(usize::MAX),
            },
            tracker.clone(),
            stats.clone(),
        )?)));
    }
    Ok(sinks)
}

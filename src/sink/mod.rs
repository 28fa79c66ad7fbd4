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

use rdkafka::ClientConfig;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use self::kafka::{Encoding, KafkaSink};
use self::parquet::{ParquetInput, ParquetSink};
use crate::ack::AckTracker;
use crate::batch::{Batch, Flush};
use crate::config::{SinkConfig, SourceConfig};
use crate::kafka_client::{client_config, PRODUCER_DEFAULTS};
use crate::pipeline::Pipeline;
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
        }
    }
}

/// How many sinks acknowledge each batch: the pipeline's sinks and dead-letter targets.
pub fn count(pipeline: &Pipeline) -> usize {
    pipeline.sinks().count()
        + usize::from(pipeline.dead_letter_parquet().is_some())
        + usize::from(pipeline.dead_letter_kafka().is_some())
}

/// The Kafka producer configuration of every Kafka sink, with the key its brokers come
/// from (for start-up checks).
pub fn kafka_clients(pipeline: &Pipeline) -> Vec<(String, ClientConfig)> {
    let SourceConfig::Kafka(source) = &pipeline.config.source;
    let config = |brokers: &Option<String>, properties| {
        let brokers = brokers.as_deref().unwrap_or(&source.brokers);
        client_config(brokers, PRODUCER_DEFAULTS, properties, &[])
    };
    let key = |path: String, brokers: &Option<String>| match brokers {
        Some(_) => format!("{path}.brokers"),
        None => "source.kafka.brokers".to_owned(),
    };
    let mut clients = Vec::new();
    for (path, sink) in pipeline.sinks() {
        if let SinkConfig::Kafka(out) = sink {
            clients.push((
                key(path, &out.brokers),
                config(&out.brokers, &out.properties),
            ));
        }
    }
    if let Some(out) = pipeline.dead_letter_kafka() {
        let path = "dead_letter.kafka".to_owned();
        clients.push((
            key(path, &out.brokers),
            config(&out.brokers, &out.properties),
        ));
    }
    clients
}

/// Builds every sink of `pipeline`, in acknowledgement order: the sinks, then the
/// Parquet and Kafka dead letters. `writer`: who writes the Parquet files (`None`: the
/// live pipeline; a backfill's run id).
pub fn build(
    pipeline: &Pipeline,
    writer: Option<String>,
    tracker: &Arc<AckTracker>,
    stats: &Arc<Stats>,
) -> Result<Vec<Sink>, SinkError> {
    let mut producers = kafka_clients(pipeline).into_iter().map(|(_, c)| c);
    let mut next_producer = || {
        producers.next().ok_or_else(|| SinkError::Setup {
            sink: "sinks".into(),
            message: "a Kafka sink without a producer configuration (a bug)".into(),
        })
    };
    let rows = pipeline.output_schema();
    let parquet = |name: String, input, sink, schema| -> Result<Sink, SinkError> {
        Ok(Sink::Parquet(Box::new(ParquetSink::new(
            name,
            input,
            sink,
            schema,
            writer.clone(),
            tracker.clone(),
            stats.clone(),
        )?)))
    };
    let mut sinks = Vec::with_capacity(count(pipeline));
    for (name, sink) in pipeline.sinks() {
        sinks.push(match sink {
            SinkConfig::Parquet(out) => parquet(name, ParquetInput::Rows, out, rows.clone())?,
            SinkConfig::Kafka(out) => {
                let index = |name: &str| rows.index_of(name).map_err(SinkError::from);
                let columns = match &out.columns {
                    Some(names) => Some(names.iter().map(|n| index(n)).collect::<Result<_, _>>()?),
                    None => None,
                };
                let key = out.key.as_deref().map(index).transpose()?;
                Sink::Kafka(Box::new(KafkaSink::new(
                    name,
                    out.topic.clone(),
                    next_producer()?,
                    Encoding::Rows {
                        columns,
                        key,
                        alert: out.alert.clone(),
                    },
                    tracker.clone(),
                    stats.clone(),
                )?))
            }
        });
    }
    if let Some(out) = pipeline.dead_letter_parquet() {
        sinks.push(parquet(
            "dead_letter.parquet".into(),
            ParquetInput::DeadLetters,
            out,
            crate::dead_letter::schema(),
        )?);
    }
    if let Some(out) = pipeline.dead_letter_kafka() {
        sinks.push(Sink::Kafka(Box::new(KafkaSink::new(
            "dead_letter.kafka".into(),
            out.topic.clone(),
            next_producer()?,
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

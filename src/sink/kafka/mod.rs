//! The `kafka` sink (rows as JSON or Avro messages) and the Kafka dead-letter sink.
//!
//! Both hand messages to an idempotent `acks=all` producer and acknowledge a batch only
//! when every one of its messages has a successful delivery report. Reports are awaited
//! in a task per batch, so the sink keeps encoding the next batch meanwhile; at most
//! [`MAX_IN_FLIGHT_BATCHES`] are outstanding. librdkafka retries transient broker errors
//! itself until `message.timeout.ms`; a delivery that still fails stops the pipeline
//! (without committing the batch, which is read again on restart).
//!
//! Rows are encoded with arrow-json's line-delimited writer (one pass per batch, then split
//! at newlines: JSON escapes newlines inside strings). Dead letters keep the original key
//! and bytes and carry the reason and provenance in headers, like Kafka Connect's DLQ.
//!
//! A message the topic cannot take (over the producer's `message.max.bytes` or the
//! topic's `max.message.bytes`, or refused as an invalid record) never stops the stream:
//! - a dead letter's payload is cut to `max_payload_bytes` up front, with the headers
//!   `sluice.payload.truncated: true` and `sluice.payload.original.bytes`; if the topic
//!   still refuses it, it is sent again with headers only (no key, no payload). The
//!   Parquet dead-letter dataset always keeps the whole record.
//! - a row is left out of the output topic, counted in
//!   `sluice_sink_rejected_total{sink,reason}` and logged (rate-limited) with its source
//!   partition and offsets; it is still in every other sink.
//!
//! JSON cannot hold NaN or infinities: arrow-json writes them as `null`.
//!
//! After shutdown is requested the sink still waits for outstanding deliveries, as long as
//! they keep arriving; if none arrives for [`SHUTDOWN_GRACE`] (the brokers are gone), it
//! purges librdkafka's queues and returns [`SinkError::Interrupted`]: those batches are not
//! acknowledged, so their offsets are not committed and a restart sends them again.

mod encode;
pub mod transaction;

use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow::compute::kernels::boolean::and;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Message, OwnedMessage};
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord, Producer, PurgeConfig};
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use self::encode::{encode_dead_letters, encode_rows, headers_only, Outgoing};
use self::transaction::{Transaction, TransactionError};
use super::alert::Hysteresis;
use super::{SinkError, SinkMessage};
use crate::ack::AckTracker;
use crate::batch::{Batch, BatchId, TopicPartition};
use crate::config::AlertConfig;
use crate::exactly_once::Link;
use crate::kafka_client::ClientEvents;
use crate::telemetry::throttle::Throttle;
use crate::telemetry::Stats;

pub const MAX_IN_FLIGHT_BATCHES: usize = 64;

/// A message format whose schema lives in the schema registry.
#[derive(Debug, Clone)]
pub enum Registered {
    Avro(super::avro::AvroOutput),
    Protobuf(super::protobuf::ProtobufOutput),
}

impl Registered {
    /// Registers the schema (or fetches the pinned version) before the first message.
    async fn prepare(
        &mut self,
        shutdown: &CancellationToken,
        stats: &Stats,
    ) -> Result<(), SinkError> {
        match self {
            Registered::Avro(avro) => avro.prepare(shutdown, stats).await,
            Registered::Protobuf(protobuf) => protobuf.prepare(shutdown, stats).await,
        }
    }

    /// One framed message per row.
    pub(super) fn encode(
        &self,
        rows: &arrow::array::RecordBatch,
    ) -> Result<Vec<Vec<u8>>, SinkError> {
        match self {
            Registered::Avro(avro) => avro.encode(rows),
            Registered::Protobuf(protobuf) => protobuf.encode(rows),
        }
    }
}

/// After shutdown, how long the sink waits for a delivery report before it gives up on
/// the outstanding ones.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(15);

/// What the sink sends for a batch.
#[derive(Debug, Clone)]
pub enum Encoding {
    /// One message per row with `columns` (all when None), keyed by `key`'s value: a
    /// JSON object, or Avro or Protobuf when `registered`; with `alert`, only the rows that raise an alert.
    Rows {
        columns: Option<Vec<usize>>,
        key: Option<usize>,
        /// Message headers from columns: (header name, column index).
        headers: Vec<(String, usize)>,
        alert: Option<AlertConfig>,
        registered: Option<Box<Registered>>,
    },
    /// One message per dead letter: original key and bytes (the payload cut to
    /// `max_payload_bytes`), context in headers.
    DeadLetters { max_payload_bytes: usize },
}

pub struct KafkaSink {
    encoding: Encoding,
    alerts: Option<Hysteresis>,
    in_flight: JoinSet<Result<u64, SinkError>>,
    out: Arc<Output>,
    /// With `exactly_once` in a group run: the open transaction.
    transaction: Option<Transaction>,
}

/// The producer and what a delivery task needs to finish a batch.
struct Output {
    name: String,
    topic: String,
    producer: FutureProducer<ClientEvents>,
    dead_letters: bool,
    /// Acknowledge a batch once delivered; false when a transaction's commit does it.
    ack_on_delivery: bool,
    acks: Arc<AckTracker>,
    stats: Arc<Stats>,
    throttle: Throttle,
}

/// Whether a failed message was refused by the topic for what it is (size, format), so
/// sending it again unchanged cannot succeed.
fn refused(error: &KafkaError) -> Option<&'static str> {
    match error.rdkafka_error_code()? {
        RDKafkaErrorCode::MessageSizeTooLarge | RDKafkaErrorCode::InvalidMessageSize => {
            Some("too_large")
        }
        RDKafkaErrorCode::InvalidRecord | RDKafkaErrorCode::InvalidTimestamp => {
            Some("invalid_record")
        }
        _ => None,
    }
}

impl KafkaSink {
    pub fn new(
        name: String,
        topic: String,
        config: rdkafka::ClientConfig,
        link: Option<Arc<Link>>,
        encoding: Encoding,
        acks: Arc<AckTracker>,
        stats: Arc<Stats>,
    ) -> Result<Self, SinkError> {
        let producer = config
            .create_with_context(ClientEvents::new(name.clone(), stats.clone()))
            .map_err(|source| SinkError::Producer {
                sink: name.clone(),
                source,
            })?;
        let alerts = match &encoding {
            Encoding::Rows {
                alert: Some(alert), ..
            } => Some(Hysteresis::new(alert.clone())),
            _ => None,
        };
        let dead_letters = matches!(encoding, Encoding::DeadLetters { .. });
        Ok(KafkaSink {
            encoding,
            alerts,
            in_flight: JoinSet::new(),
            transaction: link.clone().map(Transaction::new),
            out: Arc::new(Output {
                name,
                topic,
                producer,
                dead_letters,
                ack_on_delivery: link.is_none(),
                acks,
                stats,
                throttle: Throttle::default(),
            }),
        })
    }

    /// Sends every batch until the input closes and every delivery is in; after
    /// `shutdown`, gives up when no delivery arrives for [`SHUTDOWN_GRACE`].
    pub async fn run(
        mut self,
        mut input: mpsc::Receiver<SinkMessage>,
        shutdown: CancellationToken,
    ) -> Result<(), SinkError> {
        if let Encoding::Rows {
            registered: Some(registered),
            ..
        } = &mut self.encoding
        {
            registered.prepare(&shutdown, &self.out.stats).await?;
        }
        if self.transaction.is_some() {
            Transaction::init(&self.out.producer)
                .await
                .map_err(|e| self.out.transaction_error(e))?;
        }
        loop {
            tokio::select! {
                biased;
                Some(done) = self.in_flight.join_next(), if !self.in_flight.is_empty() => {
                    self.finished(done)?;
                }
                message = input.recv() => match message {
                    Some(SinkMessage::Batch(batch)) => self.send(&batch).await?,
                    Some(SinkMessage::Flush(flush)) => {
                        self.wait_all(&shutdown).await?;
                        self.commit(&shutdown).await?;
                        if let Some(seq) = flush.seq {
                            self.out.acks.flushed(seq);
                        }
                    }
                    None => break,
                },
            }
        }
        self.wait_all(&shutdown).await?;
        self.commit(&shutdown).await?;
        let producer = self.out.producer.clone();
        let flushed = tokio::task::spawn_blocking(move || producer.flush(SHUTDOWN_GRACE));
        flushed
            .await
            .map_err(|e| self.out.task_error(e.to_string()))?
            .map_err(|source| self.out.delivery_error(source))
    }

    fn finished(
        &self,
        done: Result<Result<u64, SinkError>, tokio::task::JoinError>,
    ) -> Result<(), SinkError> {
        let delivered = done.map_err(|e| self.out.task_error(e.to_string()))??;
        self.out.stats.record_messages(delivered);
        Ok(())
    }

    /// Commits the open transaction, if any (every delivery is in). After `shutdown`,
    /// gives up when the other sinks make no progress for [`SHUTDOWN_GRACE`].
    async fn commit(&mut self, shutdown: &CancellationToken) -> Result<(), SinkError> {
        let Some(transaction) = &mut self.transaction else {
            return Ok(());
        };
        let started = Instant::now();
        let stalled = async {
            shutdown.cancelled().await;
            tokio::time::sleep(SHUTDOWN_GRACE).await;
        };
        let out = &self.out;
        let committed = tokio::select! {
            committed = transaction.commit(&out.producer, &out.acks) => committed,
            _ = stalled => Err(TransactionError::Abandoned),
        };
        match committed {
            Ok(0) => Ok(()),
            Ok(batches) => {
                out.stats
                    .record_commit("transaction", true, started.elapsed());
                tracing::debug!(sink = %out.name, batches, took = ?started.elapsed(), "transaction committed");
                Ok(())
            }
            Err(error) => {
                out.stats
                    .record_commit("transaction", false, started.elapsed());
                transaction.abort(&out.producer).await;
                Err(out.transaction_error(error))
            }
        }
    }

    /// Waits for every outstanding batch; after `shutdown`, only while they keep
    /// arriving.
    async fn wait_all(&mut self, shutdown: &CancellationToken) -> Result<(), SinkError> {
        loop {
            let stalled = async {
                shutdown.cancelled().await;
                tokio::time::sleep(SHUTDOWN_GRACE).await;
            };
            tokio::select! {
                done = self.in_flight.join_next() => match done {
                    Some(done) => self.finished(done)?,
                    None => return Ok(()),
                },
                _ = stalled => {
                    let outstanding = self.in_flight.len();
                    tracing::warn!(sink = %self.out.name, outstanding, grace = ?SHUTDOWN_GRACE, "no delivery report since shutdown began: giving up the outstanding batches (not committed)");
                    self.in_flight.abort_all();
                    return Err(self.out.interrupt(outstanding));
                }
            }
        }
    }

    async fn send(&mut self, batch: &Batch) -> Result<(), SinkError> {
        while self.in_flight.len() >= MAX_IN_FLIGHT_BATCHES {
            if let Some(done) = self.in_flight.join_next().await {
                self.finished(done)?;
            }
        }
        let messages = match &self.encoding {
            Encoding::Rows {
                columns,
                key,
                headers,
                registered,
                ..
            } => {
                // Alert state follows every row, replayed or not; rows whose output an
                // earlier transaction committed are not sent again.
                let raising = match &mut self.alerts {
                    Some(alerts) => Some(alerts.raises(&batch.rows)?),
                    None => None,
                };
                let fresh = self.transaction.as_ref().and_then(|t| t.fresh_rows(batch));
                let keep = match (raising, fresh) {
                    (Some(a), Some(b)) => Some(and(&a, &b)?),
                    (a, b) => a.or(b),
                };
                let kept;
                let rows = match keep {
                    Some(keep) => {
                        kept = arrow::compute::filter_record_batch(&batch.rows, &keep)?;
                        &kept
                    }
                    None => &batch.rows,
                };
                encode_rows(
                    rows,
                    columns.as_deref(),
                    *key,
                    headers,
                    registered.as_deref(),
                )?
            }
            Encoding::DeadLetters { max_payload_bytes } => {
                let (messages, truncated) = encode_dead_letters(batch, *max_payload_bytes);
                if truncated > 0 {
                    self.out.stats.record_truncated(&self.out.name, truncated);
                }
                messages
            }
        };
        if let Some(transaction) = &mut self.transaction {
            transaction
                .add(&self.out.producer, batch)
                .map_err(|e| self.out.transaction_error(e.into()))?;
        }
        let mut deliveries = Vec::with_capacity(messages.len());
        for message in messages {
            if let Some(delivery) = self.out.enqueue(&message, &batch.provenance.tp).await? {
                deliveries.push(delivery);
            }
        }
        let out = self.out.clone();
        let (tp, id) = (batch.provenance.tp.clone(), batch.provenance.id);
        self.in_flight
            .spawn(async move { out.await_deliveries(deliveries, tp, id).await });
        Ok(())
    }
}

impl Output {
    fn delivery_error(&self, source: KafkaError) -> SinkError {
        SinkError::Delivery {
            sink: self.name.clone(),
            topic: self.topic.clone(),
            source,
        }
    }

    fn transaction_error(&self, source: TransactionError) -> SinkError {
        SinkError::Transaction {
            sink: self.name.clone(),
            topic: self.topic.clone(),
            source,
        }
    }

    fn task_error(&self, message: String) -> SinkError {
        SinkError::Task {
            sink: self.name.clone(),
            message,
        }
    }

    /// Gives up on what librdkafka still holds (shutdown grace over).
    fn interrupt(&self, batches: usize) -> SinkError {
        self.producer
            .purge(PurgeConfig::default().queue().inflight());
        SinkError::Interrupted {
            sink: self.name.clone(),
            topic: self.topic.clone(),
            batches,
        }
    }

    /// Hands one message to librdkafka, waiting while its queue is full. `None` when the
    /// topic cannot take it and it was left out (a row) or was replaced (a dead letter).
    async fn enqueue(
        &self,
        message: &Outgoing,
        tp: &TopicPartition,
    ) -> Result<Option<DeliveryFuture>, SinkError> {
        loop {
            let mut record = FutureRecord::<[u8], [u8]>::to(&self.topic).payload(&message.payload);
            if let Some(key) = &message.key {
                record = record.key(key);
            }
            if let Some(headers) = &message.headers {
                record = record.headers(headers.clone());
            }
            match self.producer.send_result(record) {
                Ok(delivery) => return Ok(Some(delivery)),
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                Err((error, _)) => match refused(&error) {
                    Some(_) if self.dead_letters && !message.payload.is_empty() => {
                        let stripped =
                            headers_only(message.headers.as_ref(), message.payload.len());
                        return Box::pin(self.enqueue(&stripped, tp)).await;
                    }
                    Some(reason) => {
                        self.refuse(reason, &error, tp, message.payload.len());
                        return Ok(None);
                    }
                    None => return Err(self.delivery_error(error)),
                },
            }
        }
    }

    /// Waits for a batch's delivery reports, then acknowledges it.
    async fn await_deliveries(
        &self,
        deliveries: Vec<DeliveryFuture>,
        tp: TopicPartition,
        id: BatchId,
    ) -> Result<u64, SinkError> {
        let mut delivered = 0;
        for delivery in deliveries {
            match delivery.await {
                Ok(Ok(_)) => delivered += 1,
                Ok(Err((error, message))) => {
                    delivered += self.after_refusal(error, &message, &tp).await?;
                }
                Err(_) => {
                    return Err(self.task_error("the producer dropped a delivery report".into()))
                }
            }
        }
        if self.ack_on_delivery {
            self.acks.ack(&tp, id);
        }
        Ok(delivered)
    }

    /// A message the broker refused: a dead letter goes again as headers only, a row is
    /// left out; anything else stops the sink. Returns the messages delivered.
    async fn after_refusal(
        &self,
        error: KafkaError,
        message: &OwnedMessage,
        tp: &TopicPartition,
    ) -> Result<u64, SinkError> {
        let size = message.payload().map_or(0, <[u8]>::len);
        match refused(&error) {
            Some(_) if self.dead_letters && size > 0 => {
                let headers = message.headers().cloned();
                let stripped = headers_only(headers.as_ref(), size);
                match self.enqueue(&stripped, tp).await? {
                    Some(delivery) => match delivery.await {
                        Ok(Ok(_)) => Ok(1),
                        Ok(Err((error, _))) => Err(self.delivery_error(error)),
                        Err(_) => {
                            Err(self.task_error("the producer dropped a delivery report".into()))
                        }
                    },
                    None => Ok(0),
                }
            }
            Some(reason) => {
                self.refuse(reason, &error, tp, size);
                Ok(0)
            }
            None => Err(self.delivery_error(error)),
        }
    }

    /// Counts and logs (rate-limited) a row the topic cannot take.
    fn refuse(&self, reason: &str, error: &KafkaError, tp: &TopicPartition, bytes: usize) {
        self.stats.record_sink_rejected(&self.name, reason);
        if let Some(repeats) = self.throttle.allow(reason) {
            tracing::warn!(sink = %self.name, topic = %self.topic, source = %tp, bytes, %error, repeats, "the output topic refused a row; it is left out of this topic only (see sluice_sink_rejected_total)");
        }
    }
}

#[cfg(test)]
mod tests;

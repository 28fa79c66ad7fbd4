//! The `kafka` sink (rows as JSON messages) and the Kafka dead-letter sink.
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

use std::sync::Arc;
use std::time::Duration;

use arrow::array::{Array, RecordBatch, StringArray};
use arrow::compute::kernels::cast::cast;
use arrow::datatypes::DataType;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord, Producer};
use tokio::sync::mpsc;
use tokio::task::JoinSet;

use super::alert::Hysteresis;
use super::{SinkError, SinkMessage};
use crate::ack::AckTracker;
use crate::batch::{Batch, BatchId, TopicPartition};
use crate::config::AlertConfig;
use crate::telemetry::Stats;

pub const MAX_IN_FLIGHT_BATCHES: usize = 64;

/// What the sink sends for a batch.
#[derive(Debug, Clone)]
pub enum Encoding {
    /// One JSON object per row with `columns` (all when None), keyed by `key`'s value;
    /// with `alert`, only the rows that raise an alert.
    Rows {
        columns: Option<Vec<usize>>,
        key: Option<usize>,
        alert: Option<AlertConfig>,
    },
    /// One message per dead letter: original key and bytes, context in headers.
    DeadLetters,
}

pub struct KafkaSink {
    name: String,
    topic: String,
    producer: FutureProducer,
    encoding: Encoding,
    alerts: Option<Hysteresis>,
    acks: Arc<AckTracker>,
    stats: Arc<Stats>,
    in_flight: JoinSet<Result<u64, SinkError>>,
}

/// One encoded message, borrowing nothing so it can outlive the batch's Arrow data.
struct Outgoing {
    key: Option<Vec<u8>>,
    payload: Vec<u8>,
    headers: Option<OwnedHeaders>,
}

impl KafkaSink {
    pub fn new(
        name: String,
        topic: String,
        config: rdkafka::ClientConfig,
        encoding: Encoding,
        acks: Arc<AckTracker>,
        stats: Arc<Stats>,
    ) -> Result<Self, SinkError> {
        let producer = config.create().map_err(|source| SinkError::Producer {
            sink: name.clone(),
            source,
        })?;
        let alerts = match &encoding {
            Encoding::Rows {
                alert: Some(alert), ..
            } => Some(Hysteresis::new(alert.clone())),
            _ => None,
        };
        Ok(KafkaSink {
            name,
            topic,
            producer,
            encoding,
            alerts,
            acks,
            stats,
            in_flight: JoinSet::new(),
        })
    }

    pub async fn run(mut self, mut input: mpsc::Receiver<SinkMessage>) -> Result<(), SinkError> {
        loop {
            tokio::select! {
                biased;
                Some(done) = self.in_flight.join_next(), if !self.in_flight.is_empty() => {
                    self.finished(done)?;
                }
                message = input.recv() => match message {
                    Some(SinkMessage::Batch(batch)) => self.send(&batch).await?,
                    Some(SinkMessage::Flush(_)) => self.wait_all().await?,
                    None => break,
                },
            }
        }
        self.wait_all().await?;
        let producer = self.producer.clone();
        tokio::task::spawn_blocking(move || producer.flush(Duration::from_secs(30)))
            .await
            .map_err(|e| SinkError::Task {
                sink: self.name.clone(),
                message: e.to_string(),
            })?
            .map_err(|source| SinkError::Delivery {
                sink: self.name.clone(),
                topic: self.topic.clone(),
                source,
            })
    }

    fn finished(
        &self,
        done: Result<Result<u64, SinkError>, tokio::task::JoinError>,
    ) -> Result<(), SinkError> {
        let delivered = done.map_err(|e| SinkError::Task {
            sink: self.name.clone(),
            message: e.to_string(),
        })??;
        self.stats.record_messages(delivered);
        Ok(())
    }

    async fn wait_all(&mut self) -> Result<(), SinkError> {
        while let Some(done) = self.in_flight.join_next().await {
            self.finished(done)?;
        }
        Ok(())
    }

    async fn send(&mut self, batch: &Batch) -> Result<(), SinkError> {
        while self.in_flight.len() >= MAX_IN_FLIGHT_BATCHES {
            if let Some(done) = self.in_flight.join_next().await {
                self.finished(done)?;
            }
        }
        let messages = match &self.encoding {
            Encoding::Rows { columns, key, .. } => match &mut self.alerts {
                Some(alerts) => {
                    let raised = alerts.raises(&batch.rows)?;
                    let rows = arrow::compute::filter_record_batch(&batch.rows, &raised)?;
                    encode_rows(&rows, columns.as_deref(), *key)?
                }
                None => encode_rows(&batch.rows, columns.as_deref(), *key)?,
            },
            Encoding::DeadLetters => encode_dead_letters(batch),
        };
        let mut deliveries = Vec::with_capacity(messages.len());
        for message in messages {
            deliveries.push(self.enqueue(message).await?);
        }
        let tp = batch.provenance.tp.clone();
        let id = batch.provenance.id;
        let (acks, sink, topic) = (self.acks.clone(), self.name.clone(), self.topic.clone());
        self.in_flight
            .spawn(await_deliveries(deliveries, acks, tp, id, sink, topic));
        Ok(())
    }

    /// Hands one message to librdkafka, waiting while its queue is full.
    async fn enqueue(&self, message: Outgoing) -> Result<DeliveryFuture, SinkError> {
        loop {
            let mut record = FutureRecord::<[u8], [u8]>::to(&self.topic).payload(&message.payload);
            if let Some(key) = &message.key {
                record = record.key(key);
            }
            if let Some(headers) = &message.headers {
                record = record.headers(headers.clone());
            }
            match self.producer.send_result(record) {
                Ok(delivery) => return Ok(delivery),
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                Err((source, _)) => {
                    return Err(SinkError::Delivery {
                        sink: self.name.clone(),
                        topic: self.topic.clone(),
                        source,
                    })
                }
            }
        }
    }
}

async fn await_deliveries(
    deliveries: Vec<DeliveryFuture>,
    acks: Arc<AckTracker>,
    tp: TopicPartition,
    id: BatchId,
    sink: String,
    topic: String,
) -> Result<u64, SinkError> {
    let count = deliveries.len() as u64;
    for delivery in deliveries {
        match delivery.await {
            Ok(Ok(_)) => {}
            Ok(Err((source, _))) => {
                return Err(SinkError::Delivery {
                    sink,
                    topic,
                    source,
                })
            }
            Err(_) => {
                return Err(SinkError::Task {
                    sink,
                    message: "the producer dropped a delivery report".into(),
                })
            }
        }
    }
    acks.ack(&tp, id);
    Ok(count)
}

fn encode_rows(
    rows: &RecordBatch,
    columns: Option<&[usize]>,
    key: Option<usize>,
) -> Result<Vec<Outgoing>, SinkError> {
    if rows.num_rows() == 0 {
        return Ok(Vec::new());
    }
    let projected = match columns {
        Some(columns) => rows.project(columns)?,
        None => rows.clone(),
    };
    let mut buffer = Vec::with_capacity(projected.get_array_memory_size());
    {
        let mut writer = arrow::json::LineDelimitedWriter::new(&mut buffer);
        writer.write(&projected)?;
        writer.finish()?;
    }
    let keys = match key {
        Some(index) => Some(cast(rows.column(index), &DataType::Utf8)?),
        None => None,
    };
    let keys = keys
        .as_ref()
        .and_then(|k| k.as_any().downcast_ref::<StringArray>());
    let messages = buffer
        .split(|b| *b == b'\n')
        .filter(|line| !line.is_empty())
        .enumerate()
        .map(|(row, line)| Outgoing {
            key: keys
                .filter(|k| k.is_valid(row))
                .map(|k| k.value(row).as_bytes().to_vec()),
            payload: line.to_vec(),
            headers: None,
        })
        .collect();
    Ok(messages)
}

fn encode_dead_letters(batch: &Batch) -> Vec<Outgoing> {
    batch
        .dead_letters
        .iter()
        .map(|letter| {
            let partition = letter.tp.partition.to_string();
            let offset = letter.offset.to_string();
            let timestamp = letter.timestamp.map(|t| t.to_string()).unwrap_or_default();
            let headers = OwnedHeaders::new_with_capacity(6)
                .insert(Header {
                    key: "sluice.error.reason",
                    value: Some(letter.reason.as_str()),
                })
                .insert(Header {
                    key: "sluice.error.stage",
                    value: Some(letter.stage.as_str()),
                })
                .insert(Header {
                    key: "sluice.source.topic",
                    value: Some(&*letter.tp.topic),
                })
                .insert(Header {
                    key: "sluice.source.partition",
                    value: Some(partition.as_str()),
                })
                .insert(Header {
                    key: "sluice.source.offset",
                    value: Some(offset.as_str()),
                })
                .insert(Header {
                    key: "sluice.source.timestamp",
                    value: Some(timestamp.as_str()),
                });
            Outgoing {
                key: letter.key.clone(),
                payload: letter.payload.clone().unwrap_or_default(),
                headers: Some(headers),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::Int64Array;
    use arrow::datatypes::{Field, Schema};

    #[test]
    fn rows_become_one_json_message_each_with_projected_columns_and_key() {
        let schema = Arc::new(Schema::new(vec![
            Field::new("id", DataType::Int64, false),
            Field::new("text", DataType::Utf8, true),
        ]));
        let rows = RecordBatch::try_new(
            schema,
            vec![
                Arc::new(Int64Array::from(vec![7, 8])),
                Arc::new(StringArray::from(vec![Some("line\nbreak"), None])),
            ],
        )
        .unwrap();
        let messages = encode_rows(&rows, Some(&[1]), Some(0)).unwrap();
        assert_eq!(messages.len(), 2);
        assert_eq!(messages[0].payload, br#"{"text":"line\nbreak"}"#);
        assert_eq!(messages[0].key.as_deref(), Some(&b"7"[..]));
        assert_eq!(messages[1].payload, b"{}");
        assert_eq!(messages[1].key.as_deref(), Some(&b"8"[..]));
    }
}

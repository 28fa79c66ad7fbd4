//! Per-partition micro-batches: records are buffered per topic-partition and a batch is
//! cut when it reaches `batch.max_rows` or its first record has waited `batch.max_wait`.
//! Shared by the group source and the bounded (backfill) source.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use rdkafka::message::{BorrowedMessage, Headers, Message};

use crate::batch::{BatchId, RawBatch, TopicPartition};
use crate::config::BatchConfig;

/// The longest a poll blocks when no buffer is due.
pub(super) const POLL_INTERVAL: Duration = Duration::from_millis(100);

struct Pending {
    batch: RawBatch,
    started: Instant,
}

/// The names of the headers `config` keeps.
pub(super) fn header_names(config: &crate::config::KafkaSourceConfig) -> Vec<String> {
    config.headers.iter().map(|h| h.name().to_owned()).collect()
}

/// Per-partition buffers of records not yet sent, cut by `max_rows` and `max_wait`.
pub(super) struct Batcher {
    config: BatchConfig,
    headers: Vec<String>,
    pending: HashMap<TopicPartition, Pending>,
    next_id: u64,
}

impl Batcher {
    /// `headers`: the names of the record headers kept (in column order).
    pub(super) fn new(config: BatchConfig, headers: Vec<String>) -> Self {
        Batcher {
            config,
            pending: HashMap::new(),
            next_id: 0,
            headers,
        }
    }

    /// How long `poll` may block before a buffer is due: not at all while a buffer is
    /// open and `close_when_idle` asks for it to be cut once the consumer runs dry.
    pub(super) fn poll_timeout(&self) -> Duration {
        if self.config.close_when_idle && !self.pending.is_empty() {
            return Duration::ZERO;
        }
        let now = Instant::now();
        self.pending
            .values()
            .map(|p| {
                p.started
                    .checked_add(self.config.max_wait)
                    .map_or(POLL_INTERVAL, |due| due.saturating_duration_since(now))
            })
            .min()
            .map_or(POLL_INTERVAL, |due| due.min(POLL_INTERVAL))
    }

    /// Adds a record; returns the partition's batch when it is full.
    pub(super) fn push(&mut self, message: &BorrowedMessage<'_>) -> Option<RawBatch> {
        let tp = TopicPartition::new(message.topic(), message.partition());
        let max_rows = self.config.max_rows;
        let next_id = &mut self.next_id;
        let pending = self.pending.entry(tp.clone()).or_insert_with(|| {
            *next_id += 1;
            Pending {
                batch: RawBatch::new(BatchId(*next_id), tp.clone(), max_rows.min(65_536)),
                started: Instant::now(),
            }
        });
        if self.headers.is_empty() {
            pending.batch.push(
                message.offset(),
                message.timestamp().to_millis(),
                message.key(),
                message.payload(),
            );
        } else {
            // The last value of a header that is repeated, as Kafka clients' lastHeader().
            let mut values: Vec<Option<&[u8]>> = vec![None; self.headers.len()];
            if let Some(headers) = message.headers() {
                for header in headers.iter() {
                    if let Some(at) = self.headers.iter().position(|h| h == header.key) {
                        values[at] = header.value;
                    }
                }
            }
            pending.batch.push_with_headers(
                message.offset(),
                message.timestamp().to_millis(),
                message.key(),
                message.payload(),
                &values,
            );
        }
        if pending.batch.len() >= max_rows {
            self.pending.remove(&tp).map(|p| p.batch)
        } else {
            None
        }
    }

    /// Batches whose first record waited `max_wait`.
    pub(super) fn take_expired(&mut self) -> Vec<RawBatch> {
        let max_wait = self.config.max_wait;
        let expired: Vec<TopicPartition> = self
            .pending
            .iter()
            .filter(|(_, p)| p.started.elapsed() >= max_wait)
            .map(|(tp, _)| tp.clone())
            .collect();
        expired
            .iter()
            .filter_map(|tp| self.pending.remove(tp))
            .map(|p| p.batch)
            .collect()
    }

    /// The open batches when `close_when_idle` is on: called when a poll found nothing.
    pub(super) fn take_idle(&mut self) -> Vec<RawBatch> {
        if self.config.close_when_idle {
            self.take_all()
        } else {
            Vec::new()
        }
    }

    pub(super) fn take_all(&mut self) -> Vec<RawBatch> {
        self.pending.drain().map(|(_, p)| p.batch).collect()
    }

    pub(super) fn drop_partitions(&mut self, revoked: Vec<TopicPartition>) {
        for tp in revoked {
            if let Some(dropped) = self.pending.remove(&tp) {
                tracing::debug!(partition = %tp, records = dropped.batch.len(), "dropped unsent records of a revoked partition");
            }
        }
    }
}

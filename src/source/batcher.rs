//! Per-partition micro-batches: records are buffered per topic-partition and a batch is
//! cut when it reaches `batch.max_rows` or its first record has waited `batch.max_wait`.
//! Shared by the group source and the bounded (backfill) source.

use std::time::{Duration, Instant};

use crate::batch::{BatchId, RawBatch, RecordMap, TopicPartition};
use crate::config::BatchConfig;

/// The longest a poll blocks when no buffer is due: also how long a shutdown (or a
/// source's run ending) may wait for the loop to look, since rust-rdkafka's poll cannot be
/// woken early. 20 ms: an idle source polls 50 times a second.
pub(super) const POLL_INTERVAL: Duration = Duration::from_millis(20);

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
    pending: RecordMap<TopicPartition, Pending>,
    /// When the oldest open buffer is due (None: none is open), so that the per-message
    /// checks need not look at every buffer.
    next_due: Option<Instant>,
    /// Bytes the last batch cut at `max_rows` held: a new batch reserves as much.
    bytes_hint: usize,
    next_id: u64,
}

/// The most a new batch reserves up front.
const MAX_BYTES_HINT: usize = 8 << 20;

/// What the batcher reads of a consumed record ([`super::reader::Consumed`]: from
/// rust-rdkafka's `poll` or from the source's own fetch queue).
pub(super) trait Record {
    fn offset(&self) -> i64;
    fn timestamp_millis(&self) -> Option<i64>;
    fn key(&self) -> Option<&[u8]>;
    fn payload(&self) -> Option<&[u8]>;
    /// Calls `each` with every header's name and value, in the record's order.
    fn for_each_header<'m>(&'m self, each: impl FnMut(&str, Option<&'m [u8]>));
}

impl Batcher {
    /// `headers`: the names of the record headers kept (in column order).
    pub(super) fn new(config: BatchConfig, headers: Vec<String>) -> Self {
        Batcher {
            config,
            pending: RecordMap::default(),
            next_due: None,
            bytes_hint: 0,
            next_id: 0,
            headers,
        }
    }

    /// How long `poll` may block before a buffer is due: not at all while a buffer is
    /// open and `close_when_idle` asks for it to be cut once the consumer runs dry.
    pub(super) fn poll_timeout(&self, now: Instant) -> Duration {
        if self.config.close_when_idle && !self.pending.is_empty() {
            return Duration::ZERO;
        }
        self.next_due.map_or(POLL_INTERVAL, |due| {
            due.saturating_duration_since(now).min(POLL_INTERVAL)
        })
    }

    /// Adds a record of partition `tp`; returns the partition's batch when it is full.
    pub(super) fn push(&mut self, tp: &TopicPartition, message: &impl Record) -> Option<RawBatch> {
        let max_rows = self.config.max_rows;
        if !self.pending.contains_key(tp) {
            self.next_id += 1;
            let started = Instant::now();
            let due = started.checked_add(self.config.max_wait);
            self.next_due = match (self.next_due, due) {
                (Some(next), Some(due)) => Some(next.min(due)),
                (next, due) => next.or(due),
            };
            let mut batch = RawBatch::new(BatchId(self.next_id), tp.clone(), max_rows.min(65_536));
            batch.reserve_bytes(self.bytes_hint);
            self.pending.insert(tp.clone(), Pending { batch, started });
        }
        let pending = self.pending.get_mut(tp)?;
        if self.headers.is_empty() {
            pending.batch.push(
                message.offset(),
                message.timestamp_millis(),
                message.key(),
                message.payload(),
            );
        } else {
            // The last value of a header that is repeated, as Kafka clients' lastHeader().
            let mut values: Vec<Option<&[u8]>> = vec![None; self.headers.len()];
            message.for_each_header(|name, value| {
                if let Some(at) = self.headers.iter().position(|h| h == name) {
                    values[at] = value;
                }
            });
            pending.batch.push_with_headers(
                message.offset(),
                message.timestamp_millis(),
                message.key(),
                message.payload(),
                &values,
            );
        }
        if pending.batch.len() >= max_rows {
            self.bytes_hint = pending.batch.byte_size().min(MAX_BYTES_HINT);
            self.remove(tp)
        } else {
            None
        }
    }

    /// Takes `tp`'s open batch out.
    fn remove(&mut self, tp: &TopicPartition) -> Option<RawBatch> {
        let removed = self.pending.remove(tp)?;
        self.recompute_due();
        Some(removed.batch)
    }

    fn recompute_due(&mut self) {
        let max_wait = self.config.max_wait;
        self.next_due = self
            .pending
            .values()
            .filter_map(|p| p.started.checked_add(max_wait))
            .min();
    }

    /// Batches whose first record waited `max_wait` by `now`.
    pub(super) fn take_expired(&mut self, now: Instant) -> Vec<RawBatch> {
        if self.next_due.is_none_or(|due| now < due) {
            return Vec::new();
        }
        let max_wait = self.config.max_wait;
        let expired: Vec<TopicPartition> = self
            .pending
            .iter()
            .filter(|(_, p)| now.saturating_duration_since(p.started) >= max_wait)
            .map(|(tp, _)| tp.clone())
            .collect();
        let batches = expired
            .iter()
            .filter_map(|tp| self.pending.remove(tp))
            .map(|p| p.batch)
            .collect();
        self.recompute_due();
        batches
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
        self.next_due = None;
        self.pending.drain().map(|(_, p)| p.batch).collect()
    }

    pub(super) fn drop_partitions(&mut self, revoked: Vec<TopicPartition>) {
        for tp in revoked {
            if let Some(dropped) = self.remove(&tp) {
                tracing::debug!(partition = %tp, records = dropped.len(), "dropped unsent records of a revoked partition");
            }
        }
    }
}

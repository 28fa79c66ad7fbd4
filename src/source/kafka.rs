//! The Kafka source: a consumer group member that cuts per-partition micro-batches and
//! commits offsets only over batches every sink has made durable.
//!
//! librdkafka's consumer is polled on a dedicated blocking thread: rebalance callbacks
//! run inside `poll`, and on a revoke the callback must block until in-flight batches
//! are durable before the partitions go to another member. Offsets follow librdkafka's
//! at-least-once recipe: `enable.auto.offset.store=false`, the source stores `last + 1`
//! for a partition once the [`AckTracker`] says every batch up to it is durable, and
//! auto-commit sends stored offsets every second. On revoke and on shutdown the source
//! flushes the sinks and waits for the tracker to drain; on shutdown it then commits and
//! waits for the coordinator's answer for at most 15 s (librdkafka's synchronous commit
//! would wait for ever with the brokers gone), on revoke it stores the offsets and librdkafka commits them as it
//! unassigns the partitions (so a slow coordinator never blocks the poll thread).
//! A partition whose committed offset was deleted by retention is reported ([`super::gaps`]).
//! Records buffered for a revoked partition but not yet sent are dropped: they were never
//! committed, so the partition's new owner reads them.
//!
//! With an exactly-once output topic ([`crate::exactly_once`]) the consumer commits
//! nothing itself: every `commit_interval` it sends a checkpoint flush, the Kafka sink's
//! transaction commits the offsets, and a revoke sends a checkpoint before the revoke so
//! that transaction commits before the partitions leave. The source shares its group
//! metadata with that sink and reads each assigned partition's committed output mark.
//!
//! For `/metrics` the source reports consumer lag per assigned partition from librdkafka's
//! statistics (`statistics.interval.ms`, 5 s by default), commit outcomes and latency, and
//! its first assignment (readiness).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::config::RDKafkaLogLevel;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, Rebalance};
use rdkafka::error::{KafkaError, KafkaResult, RDKafkaErrorCode};
use rdkafka::statistics::Statistics;
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::batcher::{Batcher, Record};
use super::fetch_queue::{FetchQueue, Router};
use super::gaps::{Gap, Gaps};
use super::native;
use super::reader::Reader;
use super::settings::consumer_config;
use super::SourceMessage;
use crate::ack::AckTracker;
use crate::batch::Flush;
use crate::batch::{RawBatch, TopicPartition};
use crate::config::{KafkaSourceConfig, OnOffsetReset};
use crate::exactly_once::{parse_metadata, Link};
use crate::kafka_client::ClientEvents;
use crate::telemetry::Stats;

/// How long a revoke or shutdown waits for sinks to make in-flight batches durable.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(120);
/// How long reading committed offsets or watermarks may take.
const COMMITTED_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the commit at shutdown may wait for the group coordinator. librdkafka's
/// synchronous commit waits for it without limit, so a pipeline whose brokers are gone
/// would never stop; past this the records are read again after a restart.
const FINAL_COMMIT_TIMEOUT: Duration = Duration::from_secs(15);

/// How often, at most, the poll loop stores the offsets the sinks made durable while
/// messages keep coming (always when a poll comes back empty); auto-commit sends them
/// every `auto.commit.interval.ms` (5 s by default) anyway.
const STORE_INTERVAL: Duration = Duration::from_millis(10);

/// How often, at most, the poll loop looks for a shutdown (the token's lock) while
/// messages keep coming; a poll that waited has taken longer than this.
const CANCEL_CHECK: Duration = Duration::from_millis(1);

#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("creating the Kafka consumer: {0}")]
    Create(#[source] KafkaError),
    #[error("subscribing to {topics:?}: {source}")]
    Subscribe {
        topics: Vec<String>,
        source: KafkaError,
    },
    #[error("the pipeline downstream of the source stopped")]
    PipelineClosed,
    #[error(
        "{}: offsets {}..{} were deleted by retention before they were read ({} records); \
         stopping without committing (source.kafka.on_offset_reset: fail)",
        .0.tp, .0.from, .0.to, .0.records()
    )]
    OffsetReset(Gap),
}

/// Rebalance handling. Runs on the source thread, inside `poll`.
struct SourceContext {
    out: mpsc::Sender<SourceMessage>,
    tracker: Arc<AckTracker>,
    /// Partitions revoked during the last poll; the loop drops their unsent buffers.
    revoked: Mutex<Vec<TopicPartition>>,
    /// Whether `revoked` holds any: the loop looks at this after every message, and
    /// takes the lock only when it is set.
    any_revoked: AtomicBool,
    stats: Arc<Stats>,
    /// When offsets were first stored since the last auto-commit (commit latency).
    stored_since: Mutex<Option<Instant>>,
    /// Logs, errors and broker health (rate-limited, counted).
    events: ClientEvents,
    /// Next expected offset per assigned partition (records lost to retention).
    gaps: Mutex<Gaps>,
    /// With an exactly-once output topic: what its sink needs from this consumer, and
    /// when the last checkpoint went out and whether batches were sent since.
    exactly_once: Option<(Arc<Link>, Mutex<Checkpoints>)>,
    /// Routes newly assigned partitions to the source's fetch queue.
    router: Arc<Router>,
}

/// When the last checkpoint went out, and whether batches were sent since.
type Checkpoints = (Instant, bool);

impl ClientContext for SourceContext {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, log_message: &str) {
        self.events.on_log(level, fac, log_message);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        self.events.on_error(error, reason);
    }

    fn stats(&self, statistics: Statistics) {
        self.events.on_stats(&statistics);
        for (topic, t) in &statistics.topics {
            for (&partition, p) in &t.partitions {
                if partition < 0 {
                    continue; // librdkafka's internal "unassigned" partition
                }
                if p.consumer_lag >= 0 && p.fetch_state == "active" {
                    self.stats
                        .set_consumer_lag(topic, partition, p.consumer_lag);
                }
            }
        }
    }
}

impl ConsumerContext for SourceContext {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Revoke(list) => {
                let tps = partitions_of(list);
                tracing::info!(partitions = ?tps.iter().map(ToString::to_string).collect::<Vec<_>>(), "partitions revoked: draining in-flight batches and committing");
                self.drain_and_commit(consumer, Some(&tps));
                self.revoked
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .extend(tps);
                self.any_revoked.store(true, Ordering::Release);
            }
            Rebalance::Assign(list) => {
                let tps = partitions_of(list);
                tracing::info!(partitions = ?tps.iter().map(ToString::to_string).collect::<Vec<_>>(), "partitions assigned");
                // Before the assignment starts fetching, so that all of it comes through
                // the fetch queue.
                for (topic, partition) in self.router.route(consumer, list) {
                    tracing::warn!(topic, partition, "could not route a partition to the fetch queue: its records come one poll at a time");
                }
            }
            Rebalance::Error(e) => tracing::warn!(error = %e, "rebalance error"),
        }
    }

    fn post_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Assign(list) => {
                if let Some((link, _)) = &self.exactly_once {
                    link.set_group(consumer.group_metadata());
                }
                self.expect_committed(consumer, list);
                self.stats.readiness.set_assigned();
            }
            Rebalance::Revoke(list) => {
                let tps = partitions_of(list);
                if let Some((link, _)) = &self.exactly_once {
                    link.forget(&tps);
                }
                self.lock_gaps().forget(&tps);
                for tp in tps {
                    self.stats.forget_partition(&tp.topic, tp.partition);
                }
            }
            Rebalance::Error(_) => {}
        }
    }

    fn commit_callback(&self, result: KafkaResult<()>, _offsets: &TopicPartitionList) {
        let stored_since = self
            .stored_since
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        match result {
            // Nothing new was stored since the last commit.
            Err(KafkaError::ConsumerCommit(RDKafkaErrorCode::NoOffset)) => {}
            result => {
                let elapsed = stored_since.map(|t| t.elapsed()).unwrap_or_default();
                self.stats.record_commit("auto", result.is_ok(), elapsed);
            }
        }
    }
}

impl SourceContext {
    fn lock_gaps(&self) -> std::sync::MutexGuard<'_, Gaps> {
        self.gaps.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Newly assigned partitions resume at their committed offsets: what the first
    /// record read is checked against (and, for an exactly-once output, how far its
    /// committed output went).
    fn expect_committed(&self, consumer: &BaseConsumer<Self>, list: &TopicPartitionList) {
        match consumer.committed_offsets(list.clone(), COMMITTED_TIMEOUT) {
            Ok(committed) => {
                let mut gaps = self.lock_gaps();
                for e in committed.elements() {
                    let tp = TopicPartition::new(e.topic(), e.partition());
                    if let (Some((link, _)), Some(through)) =
                        (&self.exactly_once, parse_metadata(e.metadata()))
                    {
                        link.resume(tp.clone(), through);
                    }
                    if let Offset::Offset(next) = e.offset() {
                        gaps.resume_at(tp, next);
                    }
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "reading the committed offsets of new partitions failed: a retention gap at their start will not be counted")
            }
        }
    }

    /// Checks a record against its partition's expected offset; a gap is logged, counted,
    /// and returned when `on_offset_reset` is `fail`.
    fn check_gap(
        &self,
        consumer: &BaseConsumer<Self>,
        tp: &TopicPartition,
        offset: i64,
        on_reset: OnOffsetReset,
    ) -> Result<(), SourceError> {
        let gap = self.lock_gaps().read(tp, offset, || {
            native::cached_log_start(consumer, tp).or_else(|| {
                consumer
                    .fetch_watermarks(&tp.topic, tp.partition, COMMITTED_TIMEOUT)
                    .ok()
                    .map(|(low, _)| low)
            })
        });
        let Some(gap) = gap else { return Ok(()) };
        let skipped = gap.records();
        self.stats
            .record_skipped(&tp.topic, tp.partition, "offset_reset", skipped);
        tracing::error!(topic = %tp.topic, partition = tp.partition, from = gap.from, to = gap.to, skipped, "records were deleted by retention before they were read (the broker's log now starts past the committed offset); counted in sluice_records_skipped_total");
        match on_reset {
            OnOffsetReset::Skip => Ok(()),
            OnOffsetReset::Fail => Err(SourceError::OffsetReset(gap)),
        }
    }

    fn take_revoked(&self) -> Vec<TopicPartition> {
        if !self.any_revoked.swap(false, Ordering::Acquire) {
            return Vec::new();
        }
        std::mem::take(&mut *self.revoked.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// Registers a batch with the tracker and sends it downstream (blocking while the
    /// pipeline is full: that is the backpressure).
    fn send(&self, batch: RawBatch, stats: &Stats) -> Result<(), SourceError> {
        self.tracker.register(&batch.provenance);
        if let Some((_, checkpoint)) = &self.exactly_once {
            checkpoint.lock().unwrap_or_else(|p| p.into_inner()).1 = true;
        }
        stats.record_batch_in(batch.len() as u64, batch.byte_size() as u64);
        self.out
            .blocking_send(SourceMessage::Batch(batch))
            .map_err(|_| SourceError::PipelineClosed)
    }

    /// Stores offsets that advanced; librdkafka's auto-commit sends them. With an
    /// exactly-once output, sends a checkpoint instead when one is due.
    fn store_offsets(&self, consumer: &BaseConsumer<Self>) -> Result<(), SourceError> {
        let offsets = self.tracker.take_committable();
        if let Some((link, checkpoint)) = &self.exactly_once {
            let mut checkpoint = checkpoint.lock().unwrap_or_else(|p| p.into_inner());
            let (last, sent) = &mut *checkpoint;
            if *sent && last.elapsed() >= link.interval {
                (*last, *sent) = (Instant::now(), false);
                drop(checkpoint);
                let flush = Flush::checkpoint().numbered(self.tracker.begin_flush());
                self.out
                    .blocking_send(SourceMessage::Flush(flush))
                    .map_err(|_| SourceError::PipelineClosed)?;
            }
            return Ok(());
        }
        if offsets.is_empty() {
            return Ok(());
        }
        match consumer.store_offsets(&offset_list(&offsets)) {
            Ok(()) => {
                self.stored_since
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .get_or_insert_with(Instant::now);
            }
            Err(e) => {
                tracing::debug!(error = %e, "storing offsets (a partition may have been revoked)")
            }
        }
        Ok(())
    }

    /// Flushes the sinks for revoked `tps` (all at shutdown, when None), waits until every
    /// batch sent for them is durable, and commits their offsets.
    fn drain_and_commit(&self, consumer: &BaseConsumer<Self>, tps: Option<&[TopicPartition]>) {
        let revoke = tps.is_some();
        let flush = match tps {
            Some(tps) => Flush::revoke(tps.to_vec()),
            None => Flush::all(),
        };
        // The transaction holds every partition's output: all of it commits before the
        // revoked partitions leave.
        let checkpoint_first = revoke && self.exactly_once.is_some();
        let send = |flush: Flush| {
            let flush = flush.numbered(self.tracker.begin_flush());
            self.out.blocking_send(SourceMessage::Flush(flush)).is_ok()
        };
        let sent = (!checkpoint_first || send(Flush::checkpoint())) && send(flush);
        if !sent {
            tracing::warn!("pipeline already stopped: committing only what is durable");
        } else if !self.tracker.wait_drained(tps, DRAIN_TIMEOUT) {
            tracing::warn!("not every in-flight batch became durable: committing only what is");
        }
        let assigned: Vec<TopicPartition> = match tps {
            Some(tps) => tps.to_vec(),
            None => consumer
                .assignment()
                .map(|l| partitions_of(&l))
                .unwrap_or_default(),
        };
        let offsets = self.tracker.committable(&assigned);
        if self.exactly_once.is_some() {
            // The sink's transaction committed these offsets with its output.
            if revoke {
                self.tracker.forget(&assigned);
            }
            return;
        }
        if revoke {
            // librdkafka commits the stored offsets of revoked partitions itself as it
            // unassigns them (enable.auto.commit), and holds the rejoin until that commit
            // is done, without blocking this thread on a coordinator that may be away.
            if !offsets.is_empty() {
                if let Err(e) = consumer.store_offsets(&offset_list(&offsets)) {
                    tracing::warn!(error = %e, "storing the offsets of revoked partitions failed; the new owner reads them again");
                }
            }
            self.tracker.forget(&assigned);
            return;
        }
        if !offsets.is_empty() {
            let list = offset_list(&offsets);
            let started = Instant::now();
            let committed = native::commit_within(consumer, &list, FINAL_COMMIT_TIMEOUT);
            self.stats
                .record_commit("sync", committed.is_ok(), started.elapsed());
            match committed {
                Ok(()) => tracing::info!(offsets = ?describe(&offsets), "committed offsets"),
                Err(e) => {
                    tracing::warn!(error = %e, "the offset commit at shutdown failed or timed out; these records will be read again")
                }
            }
        }
    }
}

/// A subscribed consumer, ready to run on its own thread.
pub struct KafkaSource {
    /// Declared before the consumer: dropped first, as librdkafka requires.
    reader: Reader,
    consumer: BaseConsumer<SourceContext>,
    batcher: Batcher,
    stats: Arc<Stats>,
    on_reset: OnOffsetReset,
}

impl KafkaSource {
    /// Creates the consumer and subscribes; fails fast on configuration errors.
    pub fn new(
        config: &KafkaSourceConfig,
        group_id: &str,
        out: mpsc::Sender<SourceMessage>,
        tracker: Arc<AckTracker>,
        link: Option<Arc<Link>>,
        stats: Arc<Stats>,
    ) -> Result<Self, SourceError> {
        let mut client = consumer_config(config, group_id);
        if link.is_some() {
            // Offsets commit in the output topic's transactions, never by themselves.
            client.set("enable.auto.commit", "false");
        }
        let context = SourceContext {
            out,
            tracker,
            revoked: Mutex::new(Vec::new()),
            any_revoked: AtomicBool::new(false),
            stats: stats.clone(),
            stored_since: Mutex::new(None),
            events: ClientEvents::new("source", stats.clone()),
            gaps: Mutex::new(Gaps::default()),
            exactly_once: link.map(|link| (link, Mutex::new((Instant::now(), false)))),
            router: Arc::default(),
        };
        let consumer: BaseConsumer<SourceContext> = client
            .create_with_context(context)
            .map_err(SourceError::Create)?;
        let fetch = FetchQueue::new(&consumer, consumer.context().router.clone());
        let topics: Vec<&str> = config.topics.iter().map(String::as_str).collect();
        consumer
            .subscribe(&topics)
            .map_err(|source| SourceError::Subscribe {
                topics: config.topics.clone(),
                source,
            })?;
        Ok(KafkaSource {
            reader: Reader::new(fetch),
            consumer,
            batcher: Batcher::new(config.batch.clone(), super::batcher::header_names(config)),
            stats,
            on_reset: config.on_offset_reset,
        })
    }

    /// Polls until `shutdown`, then drains, commits and leaves the group. Blocking: run
    /// it with `spawn_blocking`.
    pub fn run(mut self, shutdown: CancellationToken) -> Result<(), SourceError> {
        let context = self.consumer.context().clone();
        // One clock reading per message: the poll's timeout uses the last one.
        let mut now = Instant::now();
        let mut next_store = now;
        // Looking at the token takes a lock: while records flow, once per CANCEL_CHECK.
        let mut next_cancel_check = now;
        loop {
            if now >= next_cancel_check {
                if shutdown.is_cancelled() {
                    break;
                }
                next_cancel_check = now + CANCEL_CHECK;
            }
            let wait = self.batcher.poll_timeout(now);
            let (batcher, stats, on_reset) = (&mut self.batcher, &self.stats, self.on_reset);
            let consumer = &self.consumer;
            let idle = self.reader.turn(
                consumer,
                wait,
                // Counted, rate-limited and (authentication, brokers down) in /health.
                |e| context.events.on_error(e, ""),
                |tp, message| {
                    context.check_gap(consumer, tp, message.offset(), on_reset)?;
                    match batcher.push(tp, message) {
                        Some(full) => context.send(full, stats),
                        None => Ok(()),
                    }
                },
            )?;
            // A revoke runs in the turn's poll of the consumer's queue: the revoked
            // partitions' buffers go before any can be cut (librdkafka discards what
            // was fetched for them, so the turn added nothing to them).
            self.batcher.drop_partitions(context.take_revoked());
            if idle {
                for batch in self.batcher.take_idle() {
                    context.send(batch, &self.stats)?;
                }
            }
            now = Instant::now();
            for batch in self.batcher.take_expired(now) {
                context.send(batch, &self.stats)?;
            }
            // Acknowledgements come in per batch: looking for them after every message
            // would cost more than the message itself.
            if idle || now >= next_store {
                context.store_offsets(&self.consumer)?;
                next_store = now + STORE_INTERVAL;
            }
        }
        tracing::info!("shutting down: flushing buffered records and committing offsets");
        for batch in self.batcher.take_all() {
            context.send(batch, &self.stats)?;
        }
        context.drain_and_commit(&self.consumer, None);
        Ok(())
    }
}

fn partitions_of(list: &TopicPartitionList) -> Vec<TopicPartition> {
    list.elements()
        .iter()
        .map(|e| TopicPartition::new(e.topic(), e.partition()))
        .collect()
}

fn offset_list(offsets: &[(TopicPartition, i64)]) -> TopicPartitionList {
    let mut list = TopicPartitionList::with_capacity(offsets.len());
    for (tp, offset) in offsets {
        // Only fails for an invalid offset value, which `last + 1` never is.
        let _ = list.add_partition_offset(&tp.topic, tp.partition, Offset::Offset(*offset));
    }
    list
}

fn describe(offsets: &[(TopicPartition, i64)]) -> Vec<String> {
    offsets.iter().map(|(tp, o)| format!("{tp}@{o}")).collect()
}

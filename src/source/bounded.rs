//! The bounded Kafka source of `sluice backfill`: reads fixed offset ranges and stops.
//!
//! The ranges (`[start, end)` per partition) are resolved once, before reading: from
//! record timestamps with `offsets_for_times`, or given explicitly, and `end` is capped at
//! the high watermark seen at start, so records produced during the backfill are not
//! read. The consumer is *assigned* the partitions (no group membership, no offset
//! commits: a live pipeline's consumer group is not disturbed). Progress is the sink
//! dataset itself: the Parquet sink skips offsets its manifests already hold, so a
//! killed backfill started again with the same arguments re-reads but writes nothing
//! twice. When every partition has reached its end the source flushes, waits until every
//! batch is durable and returns; the pipeline then ends on its own.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::batcher::{Batcher, Record};
use super::fetch_queue::{FetchQueue, Router};
use super::reader::Reader;
use super::SourceMessage;
use crate::ack::AckTracker;
use crate::batch::Flush;
use crate::batch::{RawBatch, TopicPartition};
use crate::config::{BatchConfig, KafkaSourceConfig};
use crate::kafka_client::{check_reachable, client_config, ClientEvents, Quiet, Unreachable};
use crate::telemetry::Stats;

const METADATA_TIMEOUT: Duration = Duration::from_secs(30);
const DRAIN_TIMEOUT: Duration = Duration::from_secs(300);
/// How often, at most, positions are checked for ends without records while records
/// keep coming (always when a poll comes back empty).
const POSITION_CHECK_INTERVAL: Duration = Duration::from_millis(100);

#[derive(Debug, thiserror::Error)]
pub enum BoundedError {
    #[error("backfill: {context}: {source}")]
    Kafka {
        context: String,
        #[source]
        source: KafkaError,
    },
    #[error("backfill: {0}")]
    Plan(String),
    #[error(transparent)]
    Unreachable(#[from] Unreachable),
    #[error("the pipeline downstream of the source stopped")]
    PipelineClosed,
}

fn kafka(context: impl Into<String>) -> impl FnOnce(KafkaError) -> BoundedError {
    let context = context.into();
    move |source| BoundedError::Kafka { context, source }
}

/// Where a backfill starts and stops.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RangeSpec {
    /// Record timestamps (ms since the epoch, UTC): from the first record at or after
    /// `from` (the earliest when None) to before the first record at or after `to` (the
    /// high watermark when None).
    Times { from: Option<i64>, to: Option<i64> },
    /// Explicit `[start, end)` per partition; only these partitions.
    Offsets(Vec<(TopicPartition, i64, i64)>),
}

/// Which partitions of the range one backfill process reads.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum PartitionFilter {
    #[default]
    All,
    /// These partition numbers (`--partitions 0-5`).
    Only(Vec<i32>),
    /// Partitions `p` with `p % count == index` (`--shard 2/4`: one of 4 machines).
    Shard { index: u32, count: u32 },
}

impl PartitionFilter {
    pub fn keeps(&self, partition: i32) -> bool {
        match self {
            PartitionFilter::All => true,
            PartitionFilter::Only(list) => list.contains(&partition),
            PartitionFilter::Shard { index, count } => {
                partition.rem_euclid(*count as i32) == *index as i32
            }
        }
    }
}

/// The resolved `[start, end)` of one partition, and how far reading got.
#[derive(Debug)]
pub struct PartitionRange {
    pub tp: TopicPartition,
    pub start: i64,
    pub end: i64,
    /// The next offset to read (`end` once done).
    pub position: AtomicI64,
}

impl PartitionRange {
    pub fn done(&self) -> bool {
        self.position.load(Ordering::Relaxed) >= self.end
    }
}

/// The resolved plan, shared with whoever shows progress.
#[derive(Debug, Default)]
pub struct BackfillProgress {
    pub ranges: Vec<PartitionRange>,
    /// Names this backfill as a Parquet writer (see `sink::parquet::commit`): the same
    /// arguments give the same id, so a stopped run resumes where it stopped.
    pub run_id: String,
    /// Every partition reached its end and every batch became durable.
    pub complete: AtomicBool,
}

/// Resolves `spec` for the source's topics, for the partitions `filter` keeps.
pub fn resolve(
    config: &KafkaSourceConfig,
    spec: &RangeSpec,
    filter: &PartitionFilter,
) -> Result<BackfillProgress, BoundedError> {
    let client = plain_consumer(config);
    check_reachable(
        &client,
        "source.kafka.brokers",
        config.connect_timeout,
        None,
    )?;
    let consumer: BaseConsumer<Quiet> = client
        .create_with_context(Quiet)
        .map_err(kafka("creating the consumer"))?;
    let mut wanted: Vec<TopicPartition> = Vec::new();
    let mut explicit: HashMap<TopicPartition, (i64, i64)> = HashMap::new();
    match spec {
        RangeSpec::Offsets(list) => {
            for (tp, start, end) in list {
                explicit.insert(tp.clone(), (*start, *end));
                wanted.push(tp.clone());
            }
        }
        RangeSpec::Times { .. } => {
            for topic in &config.topics {
                let metadata = consumer
                    .fetch_metadata(Some(topic), METADATA_TIMEOUT)
                    .map_err(kafka(format!("metadata of {topic}")))?;
                let Some(t) = metadata.topics().first().filter(|t| t.error().is_none()) else {
                    return Err(BoundedError::Plan(format!("topic {topic} does not exist")));
                };
                for p in t.partitions() {
                    wanted.push(TopicPartition::new(topic.as_str(), p.id()));
                }
            }
        }
    }
    wanted.retain(|tp| filter.keeps(tp.partition));
    wanted.sort_by(|a, b| (&a.topic, a.partition).cmp(&(&b.topic, b.partition)));
    let offset_at = |tp: &TopicPartition, ts: i64| -> Result<Option<i64>, BoundedError> {
        let mut list = TopicPartitionList::new();
        list.add_partition_offset(&tp.topic, tp.partition, Offset::Offset(ts))
            .map_err(kafka("offsets_for_times"))?;
        let found = consumer
            .offsets_for_times(list, METADATA_TIMEOUT)
            .map_err(kafka(format!("offsets_for_times of {tp}")))?;
        Ok(found
            .find_partition(&tp.topic, tp.partition)
            .and_then(|e| match e.offset() {
                Offset::Offset(o) => Some(o),
                _ => None, // no record at or after ts
            }))
    };
    let mut ranges = Vec::with_capacity(wanted.len());
    for tp in wanted {
        let (low, high) = consumer
            .fetch_watermarks(&tp.topic, tp.partition, METADATA_TIMEOUT)
            .map_err(kafka(format!("watermarks of {tp}")))?;
        let (start, end) = match spec {
            RangeSpec::Offsets(_) => explicit[&tp],
            RangeSpec::Times { from, to } => {
                let start = match from {
                    Some(ts) => offset_at(&tp, *ts)?.unwrap_or(high),
                    None => low,
                };
                let end = match to {
                    Some(ts) => offset_at(&tp, *ts)?.unwrap_or(high),
                    None => high,
                };
                (start, end)
            }
        };
        if start < low {
            return Err(BoundedError::Plan(format!(
                "{tp}: start offset {start} is before the log start {low} (deleted by retention)"
            )));
        }
        let end = end.min(high);
        let start = start.min(end);
        ranges.push(PartitionRange {
            tp,
            start,
            end,
            position: AtomicI64::new(start),
        });
    }
    if ranges.is_empty() {
        return Err(BoundedError::Plan("no partitions to read".into()));
    }
    Ok(BackfillProgress {
        ranges,
        run_id: String::new(),
        complete: AtomicBool::new(false),
    })
}

/// A consumer for assigned reading: no group, no commits.
fn plain_consumer(config: &KafkaSourceConfig) -> ClientConfig {
    let pacing = super::settings::FetchPacing::of(config);
    let mut client = client_config(
        &config.brokers,
        &pacing.settings(),
        &config.properties,
        &[
            ("enable.auto.commit", "false"),
            ("enable.auto.offset.store", "false"),
        ],
    );
    // librdkafka wants a group id even for assign(); an assigned consumer never joins it
    // and this one never commits, so the live group is untouched.
    client.set("group.id", "sluice-backfill");
    client.remove("group.instance.id");
    client
}

/// The downstream end of a bounded source (Kafka ranges or files): sends batches, and at
/// the end makes everything durable and records whether the whole range was covered.
pub(super) struct BoundedOutput {
    pub out: mpsc::Sender<SourceMessage>,
    pub tracker: Arc<AckTracker>,
    pub stats: Arc<Stats>,
    pub progress: Arc<BackfillProgress>,
}

/// The pipeline downstream stopped.
pub(super) struct Closed;

impl BoundedOutput {
    pub fn send(&self, batch: RawBatch) -> Result<(), Closed> {
        self.tracker.register(&batch.provenance);
        self.stats
            .record_batch_in(batch.len() as u64, batch.byte_size() as u64);
        self.out
            .blocking_send(SourceMessage::Batch(batch))
            .map_err(|_| Closed)
    }

    /// Flushes the sinks, waits until every batch is durable and sets
    /// [`BackfillProgress::complete`]; returns whether every range reached its end.
    pub fn finish(&self) -> bool {
        let drained = self
            .out
            .blocking_send(SourceMessage::Flush(
                Flush::all().numbered(self.tracker.begin_flush()),
            ))
            .is_ok()
            && self.tracker.wait_drained(None, DRAIN_TIMEOUT);
        let reached = self.progress.ranges.iter().all(PartitionRange::done);
        self.progress
            .complete
            .store(drained && reached, Ordering::Relaxed);
        if !reached {
            tracing::warn!("backfill stopped before every partition reached its end; run it again with the same arguments to finish");
        }
        reached
    }
}

impl From<Closed> for BoundedError {
    fn from(_: Closed) -> Self {
        BoundedError::PipelineClosed
    }
}

/// Reads the ranges of `progress` and sends them downstream as micro-batches.
pub struct BoundedSource {
    /// Declared before the consumer: dropped first, as librdkafka requires.
    reader: Reader,
    consumer: BaseConsumer<ClientEvents>,
    batcher: Batcher,
    output: BoundedOutput,
}

impl BoundedSource {
    pub fn new(
        config: &KafkaSourceConfig,
        progress: Arc<BackfillProgress>,
        out: mpsc::Sender<SourceMessage>,
        tracker: Arc<AckTracker>,
        stats: Arc<Stats>,
    ) -> Result<Self, BoundedError> {
        let consumer: BaseConsumer<ClientEvents> = plain_consumer(config)
            .create_with_context(ClientEvents::new("source", stats.clone()))
            .map_err(kafka("creating the consumer"))?;
        let mut list = TopicPartitionList::new();
        for range in progress.ranges.iter().filter(|r| !r.done()) {
            list.add_partition_offset(
                &range.tp.topic,
                range.tp.partition,
                Offset::Offset(range.start),
            )
            .map_err(kafka("assigning"))?;
        }
        // Routed before the assignment starts fetching, so that all of it comes through
        // the fetch queue.
        let router = Arc::new(Router::default());
        let fetch = FetchQueue::new(&consumer, router.clone());
        for (topic, partition) in router.route(&consumer, &list) {
            tracing::warn!(topic, partition, "could not route a partition to the fetch queue: its records come one poll at a time");
        }
        consumer.assign(&list).map_err(kafka("assigning"))?;
        stats.readiness.set_assigned();
        Ok(BoundedSource {
            reader: Reader::new(fetch),
            consumer,
            // A backfill reads a backlog: batches fill, never cut early.
            batcher: Batcher::new(
                BatchConfig {
                    close_when_idle: false,
                    ..config.batch.clone()
                },
                super::batcher::header_names(config),
            ),
            output: BoundedOutput {
                out,
                tracker,
                stats,
                progress,
            },
        })
    }

    fn send(&self, batch: RawBatch) -> Result<(), BoundedError> {
        Ok(self.output.send(batch)?)
    }

    /// Reads until every range is done (or `shutdown`), then makes everything durable.
    pub fn run(mut self, shutdown: CancellationToken) -> Result<(), BoundedError> {
        let index: HashMap<TopicPartition, usize> = self
            .output
            .progress
            .ranges
            .iter()
            .enumerate()
            .map(|(i, r)| (r.tp.clone(), i))
            .collect();
        // One clock reading per message: the poll's timeout uses the last one.
        let mut now = Instant::now();
        let mut next_position_check = now;
        while !shutdown.is_cancelled()
            && !self.output.progress.ranges.iter().all(PartitionRange::done)
        {
            let wait = self.batcher.poll_timeout(now);
            let (batcher, output, consumer) = (&mut self.batcher, &self.output, &self.consumer);
            let idle = self.reader.turn(
                consumer,
                wait,
                |e| consumer.context().on_error(e, ""),
                |tp, message| take_record(batcher, output, consumer, &index, tp, message),
            )?;
            now = Instant::now();
            // Ends without records show once a partition has nothing more to give:
            // looking while records keep coming in would only cost time.
            if idle || now >= next_position_check {
                next_position_check = now + POSITION_CHECK_INTERVAL;
                self.finish_ranges_past_their_end();
            }
            for batch in self.batcher.take_expired(now) {
                self.send(batch)?;
            }
        }
        for batch in self.batcher.take_all() {
            self.send(batch)?;
        }
        self.output.finish();
        Ok(())
    }

    /// Marks done the ranges the consumer's position has passed although no record at or
    /// after their end came (offsets without records at the end: transaction markers,
    /// records compacted away).
    fn finish_ranges_past_their_end(&self) {
        let mut open = self
            .output
            .progress
            .ranges
            .iter()
            .filter(|r| !r.done())
            .peekable();
        if open.peek().is_none() {
            return;
        }
        let Ok(positions) = self.consumer.position() else {
            return;
        };
        for range in open {
            if let Some(Offset::Offset(at)) = positions
                .find_partition(&range.tp.topic, range.tp.partition)
                .map(|e| e.offset())
            {
                if at >= range.end {
                    range.position.store(range.end, Ordering::Relaxed);
                }
            }
        }
    }
}

/// Buffers a record of `tp` if it lies in the partition's range (sending a batch that
/// is full), and marks the range done (pausing the partition) once it is reached.
fn take_record(
    batcher: &mut Batcher,
    output: &BoundedOutput,
    consumer: &BaseConsumer<ClientEvents>,
    index: &HashMap<TopicPartition, usize>,
    tp: &TopicPartition,
    message: &impl Record,
) -> Result<(), BoundedError> {
    let Some(range) = index.get(tp).map(|&i| &output.progress.ranges[i]) else {
        return Ok(());
    };
    let offset = message.offset();
    if offset < range.end {
        range.position.store(offset + 1, Ordering::Relaxed);
        if let Some(full) = batcher.push(tp, message) {
            output.send(full)?;
        }
    }
    if offset + 1 >= range.end {
        range.position.store(range.end, Ordering::Relaxed);
        let mut list = TopicPartitionList::new();
        list.add_partition(&tp.topic, tp.partition);
        if let Err(e) = consumer.pause(&list) {
            tracing::debug!(error = %e, partition = %tp, "pausing a finished partition");
        }
    }
    Ok(())
}

//! The bench's raw readers: how fast the same messages can be read with no work done on
//! them, the two ways a consumer can read them. Both are plain group consumers (rdkafka's
//! defaults plus the broker's settings) that read every message and touch its payload,
//! in a group of their own (`run` numbers it), timed from the first message to the last.

use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, Rebalance};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::{ClientConfig, ClientContext};

use crate::source::fetch_queue::{FetchQueue, Router};

/// How a raw reader takes messages from librdkafka.
#[derive(Debug, Clone, Copy)]
pub(crate) enum ReadMode {
    /// One `poll` per message: what a consumer written the usual way does.
    Poll,
    /// Many messages per call from a fetch queue of its own, as sluice's source reads.
    Batch,
}

/// The longest a raw read may take.
const READ_LIMIT: Duration = Duration::from_secs(1800);

/// Reads `expected` messages of `topic`; the time from the first to the last.
pub(crate) fn read(
    mode: ReadMode,
    brokers: &str,
    settings: &[(&str, &str)],
    topic: &str,
    run: usize,
    expected: u64,
) -> Result<Duration, KafkaError> {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", brokers)
        .set("group.id", format!("sluice-bench-raw-{mode:?}-{run}"))
        .set("auto.offset.reset", "earliest");
    for (key, value) in settings {
        config.set(*key, *value);
    }
    let context = Routing(Arc::default());
    let router = context.0.clone();
    let consumer: BaseConsumer<Routing> = config.create_with_context(context)?;
    let mut queue = match mode {
        ReadMode::Poll => None,
        ReadMode::Batch => Some(FetchQueue::new(&consumer, router)),
    };
    consumer.subscribe(&[topic])?;
    let (mut seen, mut bytes, mut first) = (0u64, 0usize, None);
    let deadline = Instant::now() + READ_LIMIT;
    while seen < expected && Instant::now() < deadline {
        // Rebalances come through the consumer's queue in both modes.
        let wait = if queue.is_some() {
            Duration::ZERO
        } else {
            Duration::from_millis(100)
        };
        if let Some(message) = consumer.poll(wait) {
            let message = message?;
            first.get_or_insert_with(Instant::now);
            bytes += message.payload().map_or(0, <[u8]>::len);
            seen += 1;
        }
        if let Some(queue) = &mut queue {
            let read = queue.read(Duration::from_millis(100));
            if !read.is_empty() {
                first.get_or_insert_with(Instant::now);
            }
            for message in read.iter() {
                bytes += message?.payload().map_or(0, <[u8]>::len);
                seen += 1;
            }
        }
    }
    tracing::debug!(?mode, seen, bytes, "raw read done");
    let elapsed = first.map(|t| t.elapsed()).unwrap_or_default();
    // The queue goes before the consumer, as librdkafka requires.
    drop(queue);
    Ok(elapsed)
}

/// A consumer context that routes assigned partitions to the reader's fetch queue (when
/// it has one).
struct Routing(Arc<Router>);

impl ClientContext for Routing {}

impl ConsumerContext for Routing {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Assign(list) = rebalance {
            self.0.route(consumer, list);
        }
    }
}

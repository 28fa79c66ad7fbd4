//! The librdkafka configuration of the source's consumers: the group member's
//! (`consumer_config`) and how both it and the backfill's assigned consumer pace their
//! fetches ([`FetchPacing`]).

use std::time::Duration;

use rdkafka::ClientConfig;

use crate::config::{KafkaSourceConfig, StartFrom};
use crate::kafka_client::client_config;

/// How the source's consumers pace their fetches (the pipeline's `properties` override
/// either setting):
/// - `fetch.wait.max.ms`: as long as a micro-batch may wait (`batch.max_wait`), at most
///   500 ms. Brokers answer a fetch as soon as data arrives, but some (librdkafka's mock
///   cluster among them) hold an empty one for the whole wait, which then adds up to
///   librdkafka's 500 ms to every record's latency (`sluice bench --rate`: p50 566 ms ->
///   132 ms at 60 records/s);
/// - `fetch.queue.backoff.ms`: 10 ms (or `max_wait` when shorter). librdkafka postpones
///   the next fetch of a partition whose local queue is over its thresholds
///   (`queued.min.messages`, 100,000, counted over the whole consumer queue;
///   `queued.max.messages.kbytes`) by this long. librdkafka's 1000 ms left a pipeline at
///   full speed idle for ~0.7 s of every 1.3 s (`sluice bench --broker tansu`, 2,000,000
///   records: 357k -> 892k records/s); `max_wait` (100 ms) still let the queue run dry
///   before the next fetch at a million records/s (idle slices every ~0.45 s); 10 ms
///   looks again long before 100,000 records are gone.
pub(crate) struct FetchPacing {
    wait_ms: String,
    backoff_ms: String,
}

/// The longest `fetch.queue.backoff.ms` the source sets.
const QUEUE_BACKOFF: Duration = Duration::from_millis(10);

impl FetchPacing {
    pub(crate) fn of(config: &KafkaSourceConfig) -> Self {
        let ms = |d: Duration| d.as_millis().clamp(1, 500).to_string();
        FetchPacing {
            wait_ms: ms(config.batch.max_wait),
            backoff_ms: ms(config.batch.max_wait.min(QUEUE_BACKOFF)),
        }
    }

    /// The two librdkafka settings, as defaults under the pipeline's `properties`.
    pub(crate) fn settings(&self) -> [(&'static str, &str); 2] {
        [
            ("fetch.wait.max.ms", self.wait_ms.as_str()),
            ("fetch.queue.backoff.ms", self.backoff_ms.as_str()),
        ]
    }
}

/// The group member's librdkafka configuration: sluice's defaults, the pipeline's
/// `properties`, and offset storing left to sluice.
pub fn consumer_config(config: &KafkaSourceConfig, group_id: &str) -> ClientConfig {
    let reset = match config.start {
        StartFrom::Earliest => "earliest",
        StartFrom::Latest => "latest",
    };
    let pacing = FetchPacing::of(config);
    let [wait, backoff] = pacing.settings();
    let defaults = [
        ("group.id", group_id),
        ("auto.offset.reset", reset),
        ("enable.auto.commit", "true"),
        ("auto.commit.interval.ms", "1000"),
        ("statistics.interval.ms", "5000"),
        wait,
        backoff,
    ];
    let fixed = [("enable.auto.offset.store", "false")];
    client_config(&config.brokers, &defaults, &config.properties, &fixed)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn source(yaml: &str) -> KafkaSourceConfig {
        serde_norway::from_str(yaml).expect("a source section")
    }

    #[test]
    fn fetches_wait_as_long_as_a_batch_may_and_a_full_queue_is_looked_at_again_soon() {
        // (fetch.wait.max.ms, fetch.queue.backoff.ms) for a source section.
        let pacing = |yaml: &str| {
            let config = consumer_config(&source(yaml), "g");
            let get = |key: &str| config.get(key).map(str::to_owned).unwrap_or_default();
            (get("fetch.wait.max.ms"), get("fetch.queue.backoff.ms"))
        };
        let pair = |wait: &str, backoff: &str| (wait.to_owned(), backoff.to_owned());
        // librdkafka's own back-off (1000 ms), and even 100 ms, let a fast pipeline drain
        // its queue and idle before the next fetch.
        assert_eq!(
            pacing("brokers: b:9092\ntopics: [t]\nbatch: {max_wait: 100ms}\n"),
            pair("100", "10")
        );
        assert_eq!(
            pacing("brokers: b:9092\ntopics: [t]\nbatch: {max_wait: 10s}\n"),
            pair("500", "10")
        );
        assert_eq!(
            pacing("brokers: b:9092\ntopics: [t]\nbatch: {max_wait: 2ms}\n"),
            pair("2", "2")
        );
        let own = "brokers: b:9092\ntopics: [t]\nproperties: {fetch.queue.backoff.ms: 5}\n";
        assert_eq!(pacing(own).1, "5");
    }
}

//! Sample customer-feedback records, and a producer that loads them into a topic.
//!
//! Used by `sluice demo`, `sluice bench` and the tests. Records follow
//! `schemas/customer_feedback.json`; with a malformed rate above zero, some records are
//! broken in the ways real producers break them (truncated JSON, a wrong type, a missing
//! required field, bytes that are not UTF-8, an oversized record), each of which must end
//! up in the dead letters.

use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::ClientConfig;

const OPENINGS: &[&str] = &[
    "The delivery was",
    "Support answered and was",
    "The new app update is",
    "Checkout felt",
    "The product quality is",
    "Billing this month was",
    "The onboarding call was",
];
const VERDICTS: &[&str] = &[
    "fantastic, thank you",
    "slow and confusing",
    "fine, nothing special",
    "broken again: I could not log in",
    "great value for the price",
    "a bit late but the team kept me informed",
    "the worst experience I have had with you",
];
const CHANNELS: &[&str] = &["web", "ios", "android", "email", "call-center"];

/// One record to produce.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SampleRecord {
    pub key: String,
    pub payload: Vec<u8>,
    /// Kafka timestamp (ms since the epoch, UTC).
    pub timestamp_ms: i64,
    /// False for records deliberately broken; they must reach the dead letters.
    pub well_formed: bool,
}

/// A deterministic stream of feedback records.
#[derive(Debug)]
pub struct FeedbackGenerator {
    rng: StdRng,
    next_id: u64,
    malformed_rate: f64,
    start_ms: i64,
    spacing_ms: i64,
}

impl FeedbackGenerator {
    /// Records start at `start_ms` and are `spacing_ms` apart; a `malformed_rate`
    /// fraction (0.0..=1.0) of them is broken.
    pub fn new(seed: u64, malformed_rate: f64, start_ms: i64, spacing_ms: i64) -> Self {
        FeedbackGenerator {
            rng: StdRng::seed_from_u64(seed),
            next_id: 0,
            malformed_rate,
            start_ms,
            spacing_ms,
        }
    }

    fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        items[self.rng.random_range(0..items.len())]
    }

    fn well_formed_json(&mut self, id: u64, ts: i64) -> String {
        let text = format!("{} {}", self.pick(OPENINGS), self.pick(VERDICTS));
        let rating = if self.rng.random_bool(0.8) {
            self.rng.random_range(1..=5).to_string()
        } else {
            "null".to_owned()
        };
        let channel = self.pick(CHANNELS);
        let customer = self.rng.random_range(0..500);
        let ts = chrono::DateTime::from_timestamp_millis(ts)
            .unwrap_or_default()
            .format("%Y-%m-%dT%H:%M:%S%.3fZ");
        format!(
            r#"{{"id":"fb-{id:08}","customer_id":"c-{customer:04}","text":"{text}","rating":{rating},"channel":"{channel}","ts":"{ts}"}}"#
        )
    }
}

impl Iterator for FeedbackGenerator {
    type Item = SampleRecord;

    fn next(&mut self) -> Option<SampleRecord> {
        let id = self.next_id;
        self.next_id += 1;
        let ts = self.start_ms + id as i64 * self.spacing_ms;
        let json = self.well_formed_json(id, ts);
        let broken =
            self.malformed_rate > 0.0 && self.rng.random_bool(self.malformed_rate.min(1.0));
        let payload = if broken {
            match id % 5 {
                0 => json.as_bytes()[..json.len() / 2].to_vec(),
                1 => json
                    .replace(r#""channel""#, r#""rating":"five","x""#)
                    .into_bytes(),
                2 => format!(
                    r#"{{"id":"fb-{id:08}","customer_id":"c-0001","ts":"2026-11-22T00:00:00Z"}}"#
                )
                .into_bytes(),
                3 => {
                    let mut bytes = json.into_bytes();
                    bytes.splice(10..10, [0xff, 0xfe]);
                    bytes
                }
                _ => {
                    format!(r#"{{"id":"fb-{id:08}","text":"{}"}}"#, "x".repeat(40_000)).into_bytes()
                }
            }
        } else {
            json.into_bytes()
        };
        Some(SampleRecord {
            key: format!("fb-{id:08}"),
            payload,
            timestamp_ms: ts,
            well_formed: !broken,
        })
    }
}

/// Produces `records` to `topic` and waits for every delivery report.
pub async fn produce(
    brokers: &str,
    topic: &str,
    records: impl IntoIterator<Item = SampleRecord>,
) -> Result<u64, KafkaError> {
    produce_paced(brokers, topic, records, None).await
}

/// Keeps a producer at most `max_ahead` records in front of a consumer.
#[derive(Debug, Clone)]
pub struct Pace {
    /// The consumer's counters (records consumed so far).
    pub consumer: std::sync::Arc<crate::telemetry::Stats>,
    pub max_ahead: u64,
}

/// Like [`produce`], but with `pace`, waits before each record until the consumer is
/// close enough behind: for records too large for a broker to keep them all (the mock
/// cluster keeps 5 MB per partition and drops older segments beyond that).
pub async fn produce_paced(
    brokers: &str,
    topic: &str,
    records: impl IntoIterator<Item = SampleRecord>,
    pace: Option<Pace>,
) -> Result<u64, KafkaError> {
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("linger.ms", "5")
        .set("enable.idempotence", "true")
        .set("message.max.bytes", "2000000")
        .create()?;
    let mut deliveries = Vec::new();
    for (sent, record) in records.into_iter().enumerate() {
        if let Some(pace) = &pace {
            while pace.consumer.records_in() + pace.max_ahead <= sent as u64 {
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        }
        loop {
            let future_record = FutureRecord::to(topic)
                .key(&record.key)
                .payload(&record.payload)
                .timestamp(record.timestamp_ms);
            match producer.send_result(future_record) {
                Ok(delivery) => {
                    deliveries.push(delivery);
                    break;
                }
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                Err((e, _)) => return Err(e),
            }
        }
    }
    let count = deliveries.len() as u64;
    for delivery in deliveries {
        match delivery.await {
            Ok(Ok(_)) => {}
            Ok(Err((e, _))) => return Err(e),
            Err(_) => return Err(KafkaError::Canceled),
        }
    }
    producer.flush(Duration::from_secs(30))?;
    Ok(count)
}

/// Produces generated feedback to `topic` at about `rate` records per second (one burst
/// per second, each waited for) until `count` records or `shutdown`. Returns how many.
pub async fn generate(
    brokers: &str,
    topic: &str,
    rate: u64,
    count: Option<u64>,
    malformed_rate: f64,
    shutdown: tokio_util::sync::CancellationToken,
) -> Result<u64, KafkaError> {
    let rate = rate.max(1);
    let start_ms = chrono::Utc::now().timestamp_millis();
    let spacing_ms = (1000 / rate as i64).max(1);
    let seed = start_ms as u64;
    let mut records = FeedbackGenerator::new(seed, malformed_rate, start_ms, spacing_ms);
    let mut produced = 0;
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    while count.is_none_or(|c| produced < c) {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.cancelled() => break,
        }
        let burst = count.map_or(rate, |c| rate.min(c - produced));
        produced += produce(brokers, topic, records.by_ref().take(burst as usize)).await?;
        tracing::info!(produced, topic, "generated feedback produced");
    }
    Ok(produced)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generator_is_deterministic_and_marks_broken_records() {
        let a: Vec<_> = FeedbackGenerator::new(7, 0.2, 0, 1000).take(200).collect();
        let b: Vec<_> = FeedbackGenerator::new(7, 0.2, 0, 1000).take(200).collect();
        assert_eq!(a, b);
        let broken = a.iter().filter(|r| !r.well_formed).count();
        assert!((10..=80).contains(&broken), "{broken}");
        for record in a.iter().filter(|r| r.well_formed) {
            let value: serde_json::Value = serde_json::from_slice(&record.payload).unwrap();
            assert!(value["text"].is_string());
        }
    }
}

//! Output-topic compression: the Kafka sink's messages (the sentiment pipeline's
//! `feedback-sentiment` rows, and the raw feedback records that dead letters carry)
//! produced through librdkafka with each codec to the in-process mock cluster, in
//! messages/s and bytes on the wire (librdkafka's `txbytes`), side by side in one run with
//! no compression as the baseline. This is the measurement behind the Kafka sink's
//! default codec (README "Connecting to a secured cluster").
//!
//! `cargo bench --bench compression` appends one line per codec and payload to
//! `benches/results/compression.jsonl`; `cargo test` runs it once on a few messages.

use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::mocking::MockCluster;
use rdkafka::producer::{BaseRecord, Producer, ThreadedProducer};
use rdkafka::statistics::Statistics;
use rdkafka::{ClientConfig, ClientContext};
use sluice::demo::feeds::feedback::FeedbackGenerator;

/// Keeps librdkafka's count of bytes sent to brokers.
#[derive(Clone, Default)]
struct WireBytes(Arc<AtomicU64>);

impl ClientContext for WireBytes {
    fn stats(&self, statistics: Statistics) {
        self.0.store(statistics.tx_bytes as u64, Ordering::Relaxed);
    }
}
impl rdkafka::producer::ProducerContext for WireBytes {
    type DeliveryOpaque = ();
    fn delivery(&self, _: &rdkafka::message::DeliveryResult<'_>, _: ()) {}
}

/// The sentiment pipeline's output rows as its Kafka sink writes them.
fn sentiment_rows(count: usize) -> Vec<Vec<u8>> {
    (0..count)
        .map(|i| {
            let (label, score) = if i % 3 == 0 {
                ("negative", 0.5 + (i % 500) as f64 / 1000.0)
            } else {
                ("positive", 0.6 + (i % 400) as f64 / 1000.0)
            };
            format!(r#"{{"id":"fb-{i:08}","label":"{label}","score":{score},"model_version":"3"}}"#)
                .into_bytes()
        })
        .collect()
}

fn feedback(count: usize) -> Vec<Vec<u8>> {
    FeedbackGenerator::new(7, 0.0, 1_795_305_600_000, 1_000)
        .take(count)
        .map(|r| r.payload)
        .collect()
}

/// (messages/s, bytes on the wire) producing `messages` with `codec`.
fn produce(brokers: &str, topic: &str, codec: &str, messages: &[Vec<u8>]) -> (f64, u64) {
    let wire = WireBytes::default();
    let producer: ThreadedProducer<WireBytes> = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("compression.type", codec)
        .set("linger.ms", "5")
        .set("acks", "all")
        .set("enable.idempotence", "true")
        .set("statistics.interval.ms", "100")
        .create_with_context(wire.clone())
        .expect("producer");
    let started = Instant::now();
    for message in messages {
        let mut record = BaseRecord::<(), [u8]>::to(topic).payload(message.as_slice());
        loop {
            match producer.send(record) {
                Ok(()) => break,
                Err((_, back)) => {
                    record = back;
                    producer.poll(Duration::from_millis(1));
                }
            }
        }
    }
    producer.flush(Duration::from_secs(60)).expect("flush");
    let elapsed = started.elapsed().as_secs_f64();
    // One more statistics report after the last batch went out.
    std::thread::sleep(Duration::from_millis(300));
    (
        messages.len() as f64 / elapsed,
        wire.0.load(Ordering::Relaxed),
    )
}

fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    let count = if full { 200_000 } else { 2_000 };
    let cluster = MockCluster::new(1).expect("mock cluster");
    let brokers = cluster.bootstrap_servers();
    let payloads = [
        ("feedback-sentiment rows", sentiment_rows(count)),
        ("customer-feedback records", feedback(count)),
    ];
    let mut lines = Vec::new();
    for (name, messages) in &payloads {
        let raw: usize = messages.iter().map(Vec::len).sum();
        let mut baseline = None;
        for codec in ["none", "lz4", "zstd", "snappy", "gzip"] {
            let topic = format!("bench-{codec}-{}", name.len());
            cluster.create_topic(&topic, 1, 1).expect("topic");
            let (rate, wire) = produce(&brokers, &topic, codec, messages);
            let baseline = *baseline.get_or_insert(wire);
            println!(
                "{name:<28} {codec:<7} {rate:>10.0} msg/s  {wire:>11} B on the wire ({:.2} of none, {:.1} B/msg)",
                wire as f64 / baseline as f64,
                wire as f64 / messages.len() as f64
            );
            lines.push(serde_json::json!({
                "bench": "kafka_sink_compression",
                "payload": name,
                "codec": codec,
                "messages": messages.len(),
                "payload_bytes": raw,
                "messages_per_s": rate,
                "wire_bytes": wire,
                "wire_vs_none": wire as f64 / baseline as f64,
                "cpus": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
                "at": chrono::Utc::now().to_rfc3339(),
            }));
        }
    }
    if full {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/benches/results/compression.jsonl"
        );
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .expect("results file");
        for line in lines {
            writeln!(file, "{line}").expect("write");
        }
        println!("appended to {path}");
    }
}

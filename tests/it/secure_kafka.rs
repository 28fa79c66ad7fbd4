//! Kafka as it is run in production, against broker processes:
//! - TLS: Tansu behind stunnel with a certificate the test's CA signed; sluice consumes
//!   and produces over TLS with server verification on (the shared `kafka:` block holds
//!   the settings once); a wrong CA fails start-up naming `ssl.ca.location`;
//! - SASL SCRAM: Tansu with authentication; a login it refuses is reported in `/health`
//!   while start-up waits, counted, and start-up fails with the broker's reason;
//! - compression: batches produced with zstd, lz4, snappy and gzip by the Confluent
//!   Python client are all decoded, and the output topic, compressed with zstd, is read
//!   back by the same client;
//! - settings librdkafka cannot use fail `validate` with their key path.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::producer::{FutureProducer, FutureRecord};

use crate::common::noida::Broker;
use crate::common::tansu::Tansu;
use crate::common::{self, TestPipeline};
use sluice::demo::feeds::feedback::FeedbackGenerator;

async fn create_topics(brokers: &str, properties: &[(&str, &str)], topics: &[(&str, i32)]) {
    let admin: AdminClient<DefaultClientContext> =
        common::client_with(brokers, properties).create().unwrap();
    let new: Vec<NewTopic> = topics
        .iter()
        .map(|(name, partitions)| NewTopic::new(name, *partitions, TopicReplication::Fixed(1)))
        .collect();
    let created = admin
        .create_topics(&new, &AdminOptions::new())
        .await
        .unwrap();
    assert!(created.iter().all(|r| r.is_ok()), "{created:?}");
}

async fn produce_with(brokers: &str, properties: &[(&str, &str)], topic: &str, count: usize) {
    let producer: FutureProducer = common::client_with(brokers, properties).create().unwrap();
    let records = FeedbackGenerator::new(21, 0.0, common::recent_ms(), 100).take(count);
    let mut deliveries = Vec::new();
    for record in records {
        let future = producer.send_result(
            FutureRecord::to(topic)
                .key(&record.key)
                .payload(&record.payload),
        );
        deliveries.push(future.map_err(|(e, _)| e).unwrap());
    }
    for delivery in deliveries {
        delivery.await.unwrap().map_err(|(e, _)| e).unwrap();
    }
}

/// A test pipeline whose every Kafka client uses `shared` (the top-level `kafka:` block).
fn pipeline_with_shared(
    brokers: &str,
    topic: &str,
    group: &str,
    out: &Path,
    output_topic: Option<&str>,
    shared: &[(&str, &str)],
) -> std::path::PathBuf {
    TestPipeline {
        brokers,
        topic,
        group,
        out,
        output_topic,
        dead_letter_topic: None,
        max_rows: 100,
        roll_age: "300ms",
        properties: &[],
    }
    .write_with("", shared)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sluice_consumes_and_produces_over_tls_with_the_server_verified() {
    let tansu = Tansu::tls();
    let ca = tansu.ca.display().to_string();
    let tls = [
        ("security.protocol", "ssl"),
        ("ssl.ca.location", ca.as_str()),
    ];
    create_topics(&tansu.address, &tls, &[("secure-in", 2), ("secure-out", 1)]).await;
    produce_with(&tansu.address, &tls, "secure-in", 200).await;
    let out = tempfile::tempdir().unwrap();
    let file = pipeline_with_shared(
        &tansu.address,
        "secure-in",
        "secure",
        out.path(),
        Some("secure-out"),
        &[
            ("security.protocol", "ssl"),
            ("ssl.ca.location", &ca),
            ("ssl.endpoint.identification.algorithm", "https"),
        ],
    );
    let pipeline = sluice::pipeline::load(&file).unwrap_or_else(|e| panic!("{e}"));
    let stats = common::consume_all(pipeline, 200).await;
    assert_eq!(stats.records_in, 200);
    let rows = common::read_dataset(&out.path().join("feedback"));
    assert_eq!(common::count_strings(&rows, "id").len(), 200);
    assert_eq!(
        common::committed_with(&tansu.address, &tls, "secure", "secure-in", 2)
            .iter()
            .sum::<i64>(),
        200
    );
    let sent = common::read_topic_with(
        &tansu.address,
        &tls,
        "secure-out",
        200,
        Duration::from_secs(30),
    );
    assert_eq!(sent.len(), 200);
}

#[test]
fn a_wrong_ca_fails_start_up_naming_the_setting() {
    let tansu = Tansu::tls();
    let out = tempfile::tempdir().unwrap();
    let wrong = tansu.wrong_ca.display().to_string();
    let file = pipeline_with_shared(
        &tansu.address,
        "secure-in",
        "wrong-ca",
        out.path(),
        None,
        &[("security.protocol", "ssl"), ("ssl.ca.location", &wrong)],
    );
    common::patch(&file, "    topics:", "    connect_timeout: 5s\n    topics:");
    let validated = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .arg("validate")
        .arg(&file)
        .output()
        .unwrap();
    assert!(
        validated.status.success(),
        "the settings themselves are valid"
    );
    let started = Instant::now();
    let output = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .arg("run")
        .arg(&file)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(started.elapsed() < Duration::from_secs(30));
    let last = stderr.lines().last().unwrap_or_default();
    assert!(last.contains("ssl.ca.location"), "{stderr}");
    assert!(last.contains("certificate verify failed"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_scram_login_is_in_health_counted_and_fails_start_up_with_the_reason() {
    let tansu = Tansu::sasl();
    let out = tempfile::tempdir().unwrap();
    let file = pipeline_with_shared(
        &tansu.address,
        "scram-in",
        "scram",
        out.path(),
        None,
        &[
            ("security.protocol", "sasl_plaintext"),
            ("sasl.mechanism", "SCRAM-SHA-512"),
            ("sasl.username", "sluice"),
            ("sasl.password", "${TEST_SASL_PASSWORD}"),
        ],
    );
    common::patch(
        &file,
        "    topics:",
        "    connect_timeout: 20s\n    topics:",
    );
    let addr = format!("127.0.0.1:{}", common::free_port());
    let mut child = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .arg("run")
        .arg(&file)
        .args(["--metrics-listen", &addr])
        .env("TEST_SASL_PASSWORD", "not-the-password")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut seen = None;
    let said = common::eventually(Duration::from_secs(15), || {
        seen = common::http_get(&addr, "/health");
        seen.as_ref()
            .is_some_and(|(code, body)| *code == 503 && body.contains("authentication failed"))
    })
    .await;
    let (_, metrics) = common::http_get(&addr, "/metrics").unwrap_or_default();
    let status = child.wait().unwrap();
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    assert!(said, "/health: {seen:?}\n{stderr}");
    assert!(
        metrics.contains("sluice_kafka_errors_total{")
            && metrics.contains("error=\"authentication\""),
        "{metrics}"
    );
    assert!(!status.success());
    let last = stderr.lines().last().unwrap_or_default();
    assert!(last.contains("SCRAM"), "{stderr}");
    assert!(!stderr.contains("not-the-password"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_in_every_codec_are_decoded_and_the_zstd_output_is_read_back() {
    let broker = Broker::start().unwrap();
    broker.create_topic("codecs", 1).await.unwrap();
    broker.create_topic("codecs-out", 1).await.unwrap();
    // The Confluent client produces 100 records with each codec.
    let script = r#"
import sys, json, time
from confluent_kafka import Producer
brokers, topic = sys.argv[1], sys.argv[2]
now = int(time.time() * 1000) - 60000
for codec in ["zstd", "lz4", "snappy", "gzip"]:
    p = Producer({"bootstrap.servers": brokers, "compression.type": codec, "linger.ms": 50})
    for i in range(100):
        doc = {"id": f"{codec}-{i}", "text": "compressed " * 20, "ts": "2026-11-30T00:00:00Z"}
        p.produce(topic, json.dumps(doc).encode(), key=doc["id"], timestamp=now + i)
    assert p.flush(30) == 0
"#;
    let status = Command::new("python3")
        .args(["-c", script, &broker.address, "codecs"])
        .status()
        .unwrap();
    assert!(status.success());
    let out = tempfile::tempdir().unwrap();
    let file = TestPipeline {
        brokers: &broker.address,
        topic: "codecs",
        group: "codecs",
        out: out.path(),
        output_topic: Some("codecs-out"),
        dead_letter_topic: None,
        max_rows: 100,
        roll_age: "300ms",
        properties: &[],
    }
    .write();
    common::patch(
        &file,
        "      key: id\n",
        "      key: id\n      properties:\n        compression.type: zstd\n",
    );
    let pipeline = sluice::pipeline::load(&file).unwrap_or_else(|e| panic!("{e}"));
    let stats = common::consume_all(pipeline, 400).await;
    assert_eq!((stats.records_in, stats.dead_letters), (400, 0));
    let rows = common::read_dataset(&out.path().join("feedback"));
    assert_eq!(common::count_strings(&rows, "id").len(), 400);
    let reader = r#"
import sys
from confluent_kafka import Consumer
c = Consumer({"bootstrap.servers": sys.argv[1], "group.id": "reader", "auto.offset.reset": "earliest"})
c.subscribe([sys.argv[2]])
seen = set()
for _ in range(600):
    m = c.poll(0.1)
    if m is not None and m.error() is None:
        seen.add(m.key())
    if len(seen) == 400:
        break
print(len(seen))
"#;
    let output = Command::new("python3")
        .args(["-c", reader, &broker.address, "codecs-out"])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&output.stdout).trim(), "400");
}

#[test]
fn settings_librdkafka_cannot_use_fail_validate_at_their_key_path() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        ("sasl.mechanism", "NOT-A-MECHANISM", "kafka.properties"),
        (
            "compression.type",
            "brotli",
            "kafka.properties.compression.type",
        ),
        ("ssl.ca.location", "/no/such/ca.pem", "kafka.properties"),
    ];
    for (key, value, path) in cases {
        let file = pipeline_with_shared(
            "localhost:9092",
            "in",
            "validate",
            dir.path(),
            Some("out"),
            &[("security.protocol", "sasl_ssl"), (key, value)],
        );
        let output = Command::new(env!("CARGO_BIN_EXE_sluice"))
            .arg("validate")
            .arg(&file)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{key}: {value} passed");
        assert!(
            stderr.contains(&format!(": {path}: librdkafka")),
            "{key}: {stderr}"
        );
    }
}

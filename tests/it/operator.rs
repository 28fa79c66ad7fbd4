//! What an operator sees when things go wrong, against real components:
//! - records deleted by retention while the pipeline was stopped are counted
//!   (`sluice_records_skipped_total`, the run's counters) and logged with the range;
//!   `on_offset_reset: fail` stops without committing;
//! - an error prints each cause once;
//! - a secret from `${VAR}` in places it does not belong never reaches stdout, stderr,
//!   JSON logs, `/metrics` or `/health`;
//! - a broker outage is a handful of log lines, a `/health` that says so, and prompt
//!   resumption when the broker is back;
//! - a full disk keeps the process up with `/health` saying why, and the pipeline goes on
//!   (exactly once) when space is freed.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};
use rdkafka::admin::{AdminClient, AdminOptions};
use rdkafka::client::DefaultClientContext;
use rdkafka::mocking::MockCluster;
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

use crate::common::noida::{terminate, Broker};
use crate::common::{self, TestPipeline};
use sluice::demo::feeds::feedback::{produce, FeedbackGenerator, SampleRecord};
use sluice::runtime::RunError;
use sluice::source::kafka::SourceError;

/// Records from the last hours (a broker process applies time retention).
fn feedback(seed: u64, count: usize) -> Vec<SampleRecord> {
    FeedbackGenerator::new(seed, 0.0, common::recent_ms(), 1_000)
        .take(count)
        .collect()
}

fn pipeline_file(
    brokers: &str,
    topic: &str,
    group: &str,
    out: &Path,
    extra_source: &str,
) -> std::path::PathBuf {
    TestPipeline {
        roll_age: "200ms",
        ..TestPipeline::parquet_only(brokers, topic, group, out)
    }
    .write_with(extra_source, &[])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_deleted_by_retention_are_counted_and_fail_stops_without_committing() {
    let broker = Broker::start().unwrap();
    broker.create_topic("retained", 1).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let skip = pipeline_file(
        &broker.address,
        "retained",
        "gap-skip",
        &dir.path().join("skip"),
        "",
    );
    let fail = pipeline_file(
        &broker.address,
        "retained",
        "gap-fail",
        &dir.path().join("fail"),
        "    on_offset_reset: fail\n",
    );
    let load = |file: &Path| sluice::pipeline::load(file).unwrap_or_else(|e| panic!("{e}"));
    produce(&broker.address, "retained", feedback(1, 300))
        .await
        .unwrap();
    common::consume_all(load(&skip), 300).await;
    common::consume_all(load(&fail), 300).await;

    // While both are stopped: 700 more records, then retention takes offsets below 600.
    produce(&broker.address, "retained", feedback(2, 700))
        .await
        .unwrap();
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", &broker.address)
        .create()
        .unwrap();
    let mut before = TopicPartitionList::new();
    before
        .add_partition_offset("retained", 0, Offset::Offset(600))
        .unwrap();
    admin
        .delete_records(&before, &AdminOptions::new())
        .await
        .unwrap();

    // skip: goes on from 600, and says that 300 records were never read.
    let stats = common::consume_all(load(&skip), 400).await;
    assert_eq!(stats.records_skipped, 300);
    let rows = common::read_dataset(&dir.path().join("skip/feedback"));
    let mut offsets = common::offsets_by_partition(&rows).remove(&0).unwrap();
    offsets.sort();
    let expected: Vec<i64> = (0..300).chain(600..1000).collect();
    assert_eq!(offsets, expected);

    // fail: stops with the range, and the committed offset stays where it was.
    let running = common::spawn_pipeline(load(&fail));
    let outcome = tokio::time::timeout(Duration::from_secs(60), running.handle)
        .await
        .expect("the pipeline stops by itself")
        .unwrap();
    match outcome {
        Err(RunError::Source(SourceError::OffsetReset(gap))) => {
            assert_eq!((gap.from, gap.to), (300, 600));
        }
        other => panic!("expected an offset reset error, got {other:?}"),
    }
    assert_eq!(
        common::committed(&broker.address, "gap-fail", "retained", 1),
        vec![300]
    );
}

#[test]
fn an_error_prints_each_cause_once() {
    let url = format!("http://127.0.0.1:{}", common::free_port());
    let output = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["status", &url])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert_eq!(
        stderr.matches("error sending request").count(),
        1,
        "{stderr}"
    );
}

/// `sluice run FILE --metrics-listen ADDR`, with its output captured.
fn run_binary(file: &Path, metrics: &str, envs: &[(&str, &str)]) -> Child {
    Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["--log-json", "run"])
        .arg(file)
        .args(["--metrics-listen", metrics])
        .envs(envs.iter().copied())
        .env("RUST_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// Waits until `/metrics` at `addr` says `records_in` reached `count`.
async fn consumed(addr: &str, count: f64, timeout: Duration) -> bool {
    common::eventually(timeout, || {
        common::http_get(addr, "/metrics")
            .is_some_and(|(_, text)| common::metric(&text, "sluice_records_in_total") >= count)
    })
    .await
}

fn output_of(mut child: Child) -> (Option<std::process::ExitStatus>, String) {
    let status = terminate(&mut child, Duration::from_secs(30));
    let output = child.wait_with_output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (status, text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_secret_in_a_place_it_does_not_belong_never_reaches_any_output() {
    let secret = "s3cr3t-4f1e9c-hunter2";
    let cluster = MockCluster::new(1).unwrap();
    cluster.create_topic(secret, 1, 1).unwrap();
    let brokers = cluster.bootstrap_servers();
    produce(&brokers, secret, feedback(3, 50)).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    // The password ends up as the topic (and thus in log lines and metric labels) and
    // as the group id.
    let file = pipeline_file(
        &brokers,
        "${SASL_PASSWORD}",
        "${SASL_PASSWORD}",
        dir.path(),
        "",
    );
    let addr = format!("127.0.0.1:{}", common::free_port());
    let child = run_binary(&file, &addr, &[("SASL_PASSWORD", secret)]);
    assert!(consumed(&addr, 50.0, Duration::from_secs(60)).await);
    // The consumer lag (labelled by topic) arrives with librdkafka's statistics.
    let lagged = common::eventually(Duration::from_secs(15), || {
        common::http_get(&addr, "/metrics").is_some_and(|(_, t)| t.contains("sluice_consumer_lag{"))
    })
    .await;
    assert!(lagged);
    let (_, metrics) = common::http_get(&addr, "/metrics").unwrap();
    let (_, health) = common::http_get(&addr, "/health").unwrap();
    let (status, printed) = output_of(child);
    assert!(status.is_some_and(|s| s.success()), "{printed}");
    for (what, text) in [
        ("/metrics", &metrics),
        ("/health", &health),
        ("output", &printed),
    ] {
        assert!(!text.contains(secret), "{what} shows the secret:\n{text}");
    }
    assert!(metrics.contains("topic=\"${SASL_PASSWORD}\""), "{metrics}");
    assert!(printed.contains("${SASL_PASSWORD}"), "{printed}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_outage_is_a_few_lines_a_health_answer_and_a_prompt_resumption() {
    let mut broker = Broker::start().unwrap();
    broker.create_topic("outage", 2).await.unwrap();
    produce(&broker.address, "outage", feedback(4, 500))
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let file = TestPipeline {
        brokers: &broker.address,
        topic: "outage",
        group: "outage",
        out: dir.path(),
        output_topic: None,
        dead_letter_topic: None,
        max_rows: 100,
        roll_age: "200ms",
        properties: &[("group.instance.id", "outage-member")],
    }
    .write();
    let addr = format!("127.0.0.1:{}", common::free_port());
    let child = run_binary(&file, &addr, &[]);
    assert!(consumed(&addr, 500.0, Duration::from_secs(60)).await);

    broker.stop();
    let said = common::eventually(Duration::from_secs(30), || {
        common::http_get(&addr, "/health")
            .is_some_and(|(code, body)| code == 503 && body.contains("no broker reachable"))
    })
    .await;
    assert!(said, "/health: {:?}", common::http_get(&addr, "/health"));
    tokio::time::sleep(Duration::from_secs(10)).await;
    broker.restart().unwrap();
    let back = Instant::now();
    produce(&broker.address, "outage", feedback(5, 200))
        .await
        .unwrap();
    assert!(consumed(&addr, 700.0, Duration::from_secs(60)).await);
    let resumed = back.elapsed();
    let healthy = common::eventually(Duration::from_secs(20), || {
        common::http_get(&addr, "/health").is_some_and(|(code, _)| code == 200)
    })
    .await;
    let (status, printed) = output_of(child);
    assert!(healthy, "{printed}");
    assert!(status.is_some_and(|s| s.success()), "{printed}");
    assert!(
        resumed < Duration::from_secs(20),
        "resumed after {resumed:?}"
    );
    let noisy = printed
        .lines()
        .filter(|l| l.contains("\"level\":\"ERROR\"") || l.contains("\"level\":\"WARN\""))
        .count();
    assert!(noisy <= 40, "{noisy} ERROR/WARN lines:\n{printed}");
    let rows = common::read_dataset(&dir.path().join("feedback"));
    let offsets = common::offsets_by_partition(&rows);
    let read: usize = offsets.values().map(Vec::len).sum();
    assert_eq!(read, 700, "every record once");
}

/// A small tmpfs mounted at a new directory; unmounted when dropped. The test process
/// runs as root in CI and here (see `scripts/test.sh`).
struct SmallDisk {
    path: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

impl SmallDisk {
    fn mount(bytes: u64) -> SmallDisk {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("disk");
        std::fs::create_dir(&path).unwrap();
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={bytes}"), "tmpfs"])
            .arg(&path)
            .status()
            .unwrap();
        assert!(
            status.success(),
            "mounting a tmpfs needs root (or CAP_SYS_ADMIN)"
        );
        SmallDisk { path, _dir: dir }
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.path).status();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_keeps_the_process_up_saying_why_and_it_resumes_when_space_is_freed() {
    let disk = SmallDisk::mount(6 << 20);
    // Most of the disk is taken by a file the test deletes later.
    let ballast = disk.path.join("ballast");
    std::fs::write(&ballast, vec![0u8; 5 << 20]).unwrap();
    let cluster = MockCluster::new(1).unwrap();
    cluster.create_topic("full", 2, 1).unwrap();
    let brokers = cluster.bootstrap_servers();
    // Random text: about 2.5 MB of Parquet, over the 1 MB left.
    let mut rng = rand::rngs::StdRng::seed_from_u64(11);
    let records: Vec<SampleRecord> = (0..6_000)
        .map(|i| {
            let text: String = (0..400)
                .map(|_| char::from(b'a' + rng.random_range(0..26u8)))
                .collect();
            SampleRecord {
                key: format!("r{i}"),
                payload: format!(r#"{{"id":"r{i}","text":"{text}"}}"#).into_bytes(),
                timestamp_ms: 1_795_000_000_000 + i,
                well_formed: true,
            }
        })
        .collect();
    produce(&brokers, "full", records).await.unwrap();
    let file = TestPipeline {
        brokers: &brokers,
        topic: "full",
        group: "full",
        out: &disk.path,
        output_topic: None,
        dead_letter_topic: None,
        max_rows: 500,
        roll_age: "200ms",
        properties: &[],
    }
    .write();
    common::patch(&file, "16 KiB", "64 KiB");
    common::patch(
        &file,
        "      partition_by",
        "      compression: none\n      partition_by",
    );
    let addr = format!("127.0.0.1:{}", common::free_port());
    let mut child = run_binary(&file, &addr, &[("SLUICE_STORAGE_RETRY", "5m")]);
    let said = common::eventually(Duration::from_secs(60), || {
        common::http_get(&addr, "/health")
            .is_some_and(|(code, body)| code == 503 && body.contains("storage full"))
    })
    .await;
    if !said {
        let health = common::http_get(&addr, "/health");
        let (_, printed) = output_of(child);
        panic!("/health: {health:?}\n{printed}");
    }
    assert!(child.try_wait().unwrap().is_none(), "the process stays up");
    std::fs::remove_file(&ballast).unwrap();
    let caught_up = common::eventually(Duration::from_secs(120), || {
        common::committed(&brokers, "full", "full", 2)
            .iter()
            .sum::<i64>()
            == 6_000
    })
    .await;
    let (status, printed) = output_of(child);
    assert!(caught_up, "{printed}");
    assert!(status.is_some_and(|s| s.success()), "{printed}");
    let rows = common::read_dataset(&disk.path.join("feedback"));
    let ids = common::count_strings(&rows, "id");
    assert_eq!(ids.len(), 6_000);
    assert!(ids.values().all(|n| *n == 1), "a row twice");
    assert!(common::temp_files(&disk.path).is_empty());
}

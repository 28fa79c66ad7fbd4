//! Nothing stops the pipeline: hostile records and a broker that is not there.
//!
//! - a record far over the dead-letter topic's size limit goes to the dead letters (cut,
//!   and flagged, on the topic; whole in Parquet) and the group's offset moves past it;
//!   a row too large for the output topic is left out of that topic only and counted;
//! - timestamps readers cannot hold (a field or the broker's) and raw control characters
//!   are dead letters with their kind, and what lands in Parquet is read by pyarrow;
//! - a backfill with Kafka outputs and no broker fails within seconds naming the
//!   brokers; with `--sinks parquet` it needs no broker and finishes; SIGTERM stops it
//!   at any time;
//! - a pipeline killed a few seconds after each start still commits progress every time
//!   (the first file group after an assignment rolls promptly), so the output topic's
//!   duplicates stay bounded.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use arrow::array::AsArray;
use rdkafka::mocking::MockCluster;

use crate::common::{self, TestPipeline};

use sluice::demo::feeds::feedback::{produce, FeedbackGenerator, SampleRecord};

fn record(id: &str, payload: impl Into<Vec<u8>>, timestamp_ms: i64) -> SampleRecord {
    SampleRecord {
        key: id.to_owned(),
        payload: payload.into(),
        timestamp_ms,
        well_formed: false,
    }
}

fn good(id: &str) -> SampleRecord {
    record(
        id,
        format!(r#"{{"id":"{id}","text":"fine","ts":"2026-11-22T10:00:00Z"}}"#),
        1_795_000_000_000,
    )
}

/// The dead-letter rows of a dataset: (payload length, kind of reason via the reason text).
fn dead_letter_reasons(root: &Path) -> HashMap<i64, (String, usize)> {
    let mut found = HashMap::new();
    for batch in common::read_dataset(root) {
        let offsets = common::int_column(&batch, "_offset");
        let reasons = batch.column_by_name("reason").unwrap().as_string::<i32>();
        let payloads = batch.column_by_name("payload").unwrap().as_binary::<i32>();
        for (i, offset) in offsets.iter().enumerate() {
            found.insert(
                offset.unwrap(),
                (reasons.value(i).to_owned(), payloads.value(i).len()),
            );
        }
    }
    found
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_too_large_for_the_dead_letter_topic_is_delivered_cut_and_kept_whole() {
    let cluster = MockCluster::new(1).unwrap();
    cluster.create_topic("poison", 1, 1).unwrap();
    let brokers = cluster.bootstrap_servers();
    let dir = tempfile::tempdir().unwrap();
    let huge = format!(r#"{{"id":"big","text":"{}"}}"#, "x".repeat(1_500_000));
    let long_text = format!(r#"{{"id":"long","text":"{}"}}"#, "y".repeat(3_000));
    let records = vec![
        good("a"),
        record("big", huge.clone(), 1_795_000_000_000),
        good("b"),
        record("long", long_text, 1_795_000_000_000),
        good("c"),
    ];
    produce(&brokers, "poison", records).await.unwrap();
    let file = TestPipeline {
        brokers: &brokers,
        topic: "poison",
        group: "poison",
        out: dir.path(),
        output_topic: Some("poison-out"),
        dead_letter_topic: Some("poison-dlq"),
        max_rows: 100,
        roll_age: "1s",
        properties: &[],
    }
    .write();
    // Rows over 1,000 bytes of JSON do not fit the output topic; the 3,000-character text
    // is one.
    common::patch(
        &file,
        "      key: id\n",
        "      key: id\n      properties:\n        message.max.bytes: 1000\n",
    );
    common::patch(&file, "16 KiB", "64 KiB");
    let pipeline = sluice::pipeline::load(&file).unwrap_or_else(|e| panic!("{e}"));
    let stats = common::consume_all(pipeline, 5).await;
    assert_eq!(stats.dead_letters, 1, "only the 1.5 MB record is refused");

    // The group moved past it.
    assert_eq!(common::committed(&brokers, "poison", "poison", 1), vec![5]);
    // On the topic: cut to 512 KiB, flagged, with the original size and the reason.
    let dlq = common::read_topic(&brokers, "poison-dlq", 1, Duration::from_secs(20));
    assert_eq!(dlq.len(), 1);
    let letter = &dlq[0];
    assert_eq!(letter.payload.len(), 512 * 1024);
    assert_eq!(letter.headers["sluice.payload.truncated"], "true");
    assert_eq!(
        letter.headers["sluice.payload.original.bytes"],
        huge.len().to_string()
    );
    assert_eq!(letter.headers["sluice.error.kind"], "oversized");
    assert_eq!(letter.headers["sluice.source.offset"], "1");
    // In Parquet: whole.
    let parquet = dead_letter_reasons(&dir.path().join("dead_letters"));
    assert_eq!(parquet[&1].1, huge.len());
    assert!(
        parquet[&1].0.contains("max_record_bytes"),
        "{:?}",
        parquet[&1]
    );
    // The long row is in Parquet but not on the output topic.
    let rows = common::read_dataset(&dir.path().join("feedback"));
    assert_eq!(common::count_strings(&rows, "id").len(), 4);
    let out = common::read_topic(&brokers, "poison-out", 4, Duration::from_secs(10));
    let mut ids: Vec<String> = out
        .iter()
        .map(|m| String::from_utf8(m.key.clone().unwrap()).unwrap())
        .collect();
    ids.sort();
    assert_eq!(ids, vec!["a", "b", "c"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_timestamps_and_control_characters_are_dead_letters_and_parquet_stays_readable() {
    let cluster = MockCluster::new(1).unwrap();
    cluster.create_topic("hostile", 1, 1).unwrap();
    let brokers = cluster.bootstrap_servers();
    let dir = tempfile::tempdir().unwrap();
    let now = 1_795_000_000_000;
    let records = vec![
        good("ok-1"),
        record(
            "huge-float",
            r#"{"id":"huge-float","text":"t","ts":1e30}"#,
            now,
        ),
        record(
            "i64-max",
            r#"{"id":"i64-max","text":"t","ts":9223372036854775807}"#,
            now,
        ),
        record(
            "year-1500",
            r#"{"id":"year-1500","text":"t","ts":"1500-01-01T00:00:00Z"}"#,
            now,
        ),
        record(
            "broker-ts",
            r#"{"id":"broker-ts","text":"t"}"#,
            9_999_999_999_999_999,
        ),
        record("nul", b"{\"id\":\"nul\",\"text\":\"a\0b\"}".to_vec(), now),
        record("tab", b"{\"id\":\"tab\",\"text\":\"a\tb\"}".to_vec(), now),
        record(
            "escaped",
            r#"{"id":"escaped","text":"a\u0000b\tc","ts":"2262-04-11T00:00:00Z"}"#,
            now,
        ),
        good("ok-2"),
    ];
    let produced = produce(&brokers, "hostile", records).await.unwrap();
    let pipeline = TestPipeline {
        brokers: &brokers,
        topic: "hostile",
        group: "hostile",
        out: dir.path(),
        output_topic: None,
        dead_letter_topic: Some("hostile-dlq"),
        max_rows: 100,
        roll_age: "1s",
        properties: &[],
    }
    .load();
    let stats = common::consume_all(pipeline, produced).await;
    assert_eq!(stats.dead_letters, 6);

    let letters = dead_letter_reasons(&dir.path().join("dead_letters"));
    let kinds = common::read_topic(&brokers, "hostile-dlq", 6, Duration::from_secs(20))
        .into_iter()
        .map(|m| {
            (
                m.headers["sluice.source.offset"].parse::<i64>().unwrap(),
                m.headers["sluice.error.kind"].clone(),
            )
        })
        .collect::<HashMap<_, _>>();
    for offset in [1, 2, 3, 4] {
        assert_eq!(
            kinds[&offset], "bad_timestamp",
            "offset {offset}: {letters:?}"
        );
    }
    assert!(letters[&1].0.contains("`ts`"), "{:?}", letters[&1]);
    assert!(
        letters[&4].0.contains("Kafka timestamp"),
        "{:?}",
        letters[&4]
    );
    for offset in [5, 6] {
        assert_eq!(kinds[&offset], "malformed_json");
        assert!(letters[&offset].0.contains("raw control character"));
    }

    // Everything that landed converts in pyarrow, timestamps included.
    let script = r#"
import sys, pyarrow.dataset as ds
rows = ds.dataset(sys.argv[1], partitioning="hive").to_table().to_pylist()
print(sorted(r["id"] for r in rows))
print(max(r["ts"] for r in rows if r["ts"] is not None).year)
"#;
    let output = Command::new("python3")
        .args(["-c", script])
        .arg(dir.path().join("feedback"))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(stdout.trim(), "['escaped', 'ok-1', 'ok-2']\n2262");
}

/// A demo pipeline file pointed at `brokers`, writing under `out`.
fn demo_with_brokers(brokers: &str, out: &Path) -> PathBuf {
    let text = std::fs::read_to_string(common::project("pipelines/demo.yaml"))
        .unwrap()
        .replace("${SLUICE_BROKERS:-localhost:9092}", brokers)
        .replace(
            "../schemas/",
            &format!("{}/", common::project("schemas").display()),
        )
        .replace("${SLUICE_OUT:-out/demo}", &out.display().to_string())
        .replace("    topics:", "    connect_timeout: 2s\n    topics:");
    let file = out.join("demo.yaml");
    std::fs::create_dir_all(out).unwrap();
    std::fs::write(&file, text).unwrap();
    file
}

fn closed_port() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    format!("127.0.0.1:{}", listener.local_addr().unwrap().port())
}

fn backfill(file: &Path, input: &Path, extra: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_sluice"));
    command
        .args(["backfill", "--quiet"])
        .arg(file)
        .arg("--input")
        .arg(input)
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    command
}

#[test]
fn a_backfill_without_a_broker_fails_fast_or_with_parquet_only_outputs_needs_none() {
    let dir = tempfile::tempdir().unwrap();
    let brokers = closed_port();
    let file = demo_with_brokers(&brokers, &dir.path().join("out"));
    let input = dir.path().join("input.jsonl");
    let mut generator = FeedbackGenerator::new(3, 0.01, 1_795_000_000_000, 1000);
    let lines: Vec<String> = (0..500)
        .map(|_| String::from_utf8(generator.next().unwrap().payload).unwrap_or_default())
        .collect();
    std::fs::write(&input, lines.join("\n")).unwrap();

    let started = Instant::now();
    let output = backfill(&file, &input, &[]).output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "{:?}",
        started.elapsed()
    );
    assert!(
        stderr.contains(&format!("no Kafka broker answered at `{brokers}`")),
        "{stderr}"
    );
    assert!(
        stderr.lines().count() < 40,
        "a flood of log lines: {stderr}"
    );

    let output = backfill(&file, &input, &["--sinks", "parquet"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(stdout.contains("result           complete"), "{stdout}");
    assert!(stdout.contains("Kafka messages   0"), "{stdout}");
}

#[test]
fn sigterm_stops_a_backfill_that_waits_for_a_broker() {
    let dir = tempfile::tempdir().unwrap();
    let file = demo_with_brokers(&closed_port(), &dir.path().join("out"));
    common::patch(&file, "connect_timeout: 2s", "connect_timeout: 5m");
    let input = dir.path().join("input.jsonl");
    std::fs::write(&input, r#"{"id":"a","text":"t"}"#).unwrap();
    let addr = format!("127.0.0.1:{}", common::free_port());
    let mut child = backfill(&file, &input, &["--metrics-listen", &addr])
        .spawn()
        .unwrap();
    // Wait until start-up is waiting for the broker (its /health says so).
    let deadline = Instant::now() + Duration::from_secs(30);
    while common::http_get(&addr, "/health").is_none_or(|(code, _)| code != 503) {
        assert!(Instant::now() < deadline, "the backfill never started");
        std::thread::sleep(Duration::from_millis(50));
    }
    let started = Instant::now();
    let status = common::noida::terminate(&mut child, Duration::from_secs(10));
    let status = status.expect("still running 10 s after SIGTERM");
    assert!(!status.success());
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pipeline_killed_soon_after_every_start_still_commits_progress() {
    let cluster = MockCluster::new(1).unwrap();
    cluster.create_topic("restarts", 2, 1).unwrap();
    cluster.create_topic("restarts-out", 1, 1).unwrap();
    let brokers = cluster.bootstrap_servers();
    let dir = tempfile::tempdir().unwrap();
    // Records keep arriving (1,000/s) while the pipeline is killed and restarted.
    let feeding = tokio_util::sync::CancellationToken::new();
    let feeder = tokio::spawn({
        let (brokers, feeding) = (brokers.clone(), feeding.clone());
        async move {
            let mut generator = FeedbackGenerator::new(9, 0.0, 1_795_000_000_000, 10);
            while !feeding.is_cancelled() {
                let chunk: Vec<SampleRecord> = generator.by_ref().take(100).collect();
                produce(&brokers, "restarts", chunk).await.unwrap();
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    });
    // max_age is a minute: without a prompt first roll, nothing would be durable before
    // the kill, and every run would send everything again.
    let file = TestPipeline {
        brokers: &brokers,
        topic: "restarts",
        group: "restarts",
        out: dir.path(),
        output_topic: Some("restarts-out"),
        dead_letter_topic: None,
        max_rows: 500,
        roll_age: "1m",
        properties: &[("group.instance.id", "restarts-member")],
    }
    .write();
    let committed = || -> i64 {
        common::committed(&brokers, "restarts", "restarts", 2)
            .iter()
            .map(|o| (*o).max(0))
            .sum()
    };
    let mut progress = vec![committed()];
    for _ in 0..3 {
        let mut child = Command::new(env!("CARGO_BIN_EXE_sluice"))
            .arg("run")
            .arg(&file)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let before = *progress.last().unwrap();
        let moved = common::eventually(Duration::from_secs(30), || committed() > before).await;
        child.kill().unwrap();
        child.wait().unwrap();
        assert!(moved, "no commit within 30 s of a start: {progress:?}");
        progress.push(committed());
    }
    feeding.cancel();
    feeder.await.unwrap();
    assert!(progress.windows(2).all(|w| w[1] > w[0]), "{progress:?}");
    // What each kill re-sends to the output topic is what that run read after its last
    // commit: a few seconds of records, not everything again.
    let sent = common::high_watermarks(&brokers, "restarts-out", 1)[0] as usize;
    let messages = common::read_topic(&brokers, "restarts-out", sent, Duration::from_secs(60));
    assert_eq!(messages.len(), sent);
    let distinct: std::collections::HashSet<&Vec<u8>> =
        messages.iter().filter_map(|m| m.key.as_ref()).collect();
    let duplicates = sent - distinct.len();
    assert!(
        duplicates <= 3 * 5_000,
        "{duplicates} duplicates in {sent} output messages after 3 kills"
    );
}

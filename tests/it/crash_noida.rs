//! kill -9 loses nothing and duplicates nothing: the `sluice` binary runs against a
//! separate broker process (noida-db, installed from PyPI by `scripts/setup.sh`), is
//! killed at random moments and restarted, and the final Parquet dataset holds every
//! record exactly once with no temp file left behind.
//!
//! The broker binary is found through `SLUICE_NOIDA_DB`, else through the installed
//! `noida_db` Python package. The bootstrap address is all the test needs from it, so a
//! real Kafka broker drops in the same way.

use crate::common;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use rand::{Rng, SeedableRng};

use crate::common::noida::{terminate, Broker};
use crate::common::*;
use sluice::demo::feeds::feedback::{produce, FeedbackGenerator};

const TOPIC: &str = "feedback";
const PARTITIONS: i32 = 4;
const RECORDS: usize = 100_000;

fn spawn_sluice(pipeline: &Path, log: &Path) -> Child {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .unwrap();
    Command::new(env!("CARGO_BIN_EXE_sluice"))
        .arg("run")
        .arg(pipeline)
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap()
}

/// Every visible file must be a complete Parquet file (readable footer), even right
/// after a kill.
fn assert_visible_files_complete(root: &Path) {
    for dataset in ["feedback", "dead_letters"] {
        let _ = read_dataset(&root.join(dataset));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_at_random_moments_loses_and_duplicates_nothing() {
    let broker = Broker::start().unwrap();
    broker.create_topic(TOPIC, PARTITIONS).await.unwrap();

    // Recent records: the broker process applies time retention to record timestamps.
    let sent: Vec<_> = FeedbackGenerator::new(9, 0.01, recent_ms() - 200_000_000, 2_000)
        .take(RECORDS)
        .collect();
    produce(&broker.address, TOPIC, sent.clone()).await.unwrap();
    let good = sent.iter().filter(|r| r.well_formed).count();
    let bad = sent.len() - good;

    let out = tempfile::tempdir().unwrap();
    let pipeline = TestPipeline {
        brokers: &broker.address,
        topic: TOPIC,
        group: "crash",
        out: out.path(),
        output_topic: Some("clean"),
        dead_letter_topic: None,
        max_rows: 2_000,
        roll_age: "300ms",
        // Static membership: a restarted member takes over its partitions at once
        // instead of waiting for the killed one to be evicted.
        properties: &[("group.instance.id", "sluice-crash-0")],
    }
    .write();
    let log = out.path().join("sluice.log");

    // `SLUICE_CRASH_SEED` replays the kill times of an earlier run.
    let seed: u64 = std::env::var("SLUICE_CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random);
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let hw = high_watermarks(&broker.address, TOPIC, PARTITIONS);
    for round in 0..5 {
        let mut child = spawn_sluice(&pipeline, &log);
        let wait = Duration::from_millis(rng.random_range(300..2_500));
        tokio::time::sleep(wait).await;
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        let done = committed(&broker.address, "crash", TOPIC, PARTITIONS);
        eprintln!(
            "round {round} (seed {seed}): killed after {wait:?}; committed {done:?} of {hw:?}"
        );
        assert_visible_files_complete(out.path());
    }

    let mut child = spawn_sluice(&pipeline, &log);
    let caught_up = common::eventually(Duration::from_secs(180), || {
        committed(&broker.address, "crash", TOPIC, PARTITIONS) == hw
    })
    .await;
    let status = terminate(&mut child, Duration::from_secs(60));
    let tail = log_tail(
        &[&log],
        &[
            "assigned",
            "revoked",
            "committed",
            "ERROR",
            "shutting",
            "failed",
            "skipped",
        ],
        40,
    );
    assert!(
        caught_up,
        "the last run commits everything; log tail (newest first):\n{tail}"
    );
    assert!(
        status.is_some_and(|s| s.success()),
        "SIGTERM exits 0 after draining: {status:?}\n{tail}"
    );

    let rows = read_dataset(&out.path().join("feedback"));
    let ids = count_strings(&rows, "id");
    if ids.len() != good {
        // Keep the dataset, its manifests and the log for a look.
        let kept = out.keep();
        panic!(
            "every good record is in the dataset: {} of {good} (seed {seed}); kept in {}",
            ids.len(),
            kept.display()
        );
    }
    let duplicated = ids.values().filter(|&&n| n > 1).count();
    assert_eq!(duplicated, 0, "no record is in the dataset twice");
    let letters = read_dataset(&out.path().join("dead_letters"));
    assert_eq!(
        letters.iter().map(|b| b.num_rows()).sum::<usize>(),
        bad,
        "every bad record once"
    );
    assert!(
        temp_files(out.path()).is_empty(),
        "no temp file left: {:?}",
        temp_files(out.path())
    );
}

/// The output topic in transactions (`exactly_once: true`): after kill -9 at random
/// moments and a final clean run, a `read_committed` reader sees every good record's
/// output exactly once, while the Parquet dataset beside it still holds each record once.
/// A `read_uncommitted` reader also sees what the killed runs' open transactions held
/// (aborted when the restarted member fenced them).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_with_an_exactly_once_output_topic_shows_each_output_once() {
    const RECORDS: usize = 40_000;
    const MORE: usize = 30_000;
    let broker = Broker::start().unwrap();
    broker.create_topic(TOPIC, PARTITIONS).await.unwrap();
    broker.create_topic("clean", PARTITIONS).await.unwrap();
    let sent: Vec<_> = FeedbackGenerator::new(11, 0.01, recent_ms() - 200_000_000, 2_000)
        .take(RECORDS + MORE)
        .collect();
    produce(&broker.address, TOPIC, sent[..RECORDS].to_vec())
        .await
        .unwrap();
    let good = sent.iter().filter(|r| r.well_formed).count();

    let out = tempfile::tempdir().unwrap();
    let pipeline = TestPipeline {
        brokers: &broker.address,
        topic: TOPIC,
        group: "eos",
        out: out.path(),
        output_topic: Some("clean"),
        dead_letter_topic: None,
        max_rows: 500,
        roll_age: "300ms",
        // Static membership: also the stable part of the transactional.id, so a restarted
        // member fences its killed predecessor and aborts its open transaction.
        properties: &[("group.instance.id", "sluice-eos-0")],
    }
    .write();
    patch(
        &pipeline,
        "      key: id\n",
        "      key: id\n      exactly_once: true\n      commit_interval: 200ms\n",
    );
    let log = out.path().join("sluice.log");

    let seed: u64 = std::env::var("SLUICE_CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random);
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    for round in 0..4 {
        let mut child = spawn_sluice(&pipeline, &log);
        let wait = Duration::from_millis(rng.random_range(500..1_500));
        tokio::time::sleep(wait).await;
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        let done = committed(&broker.address, "eos", TOPIC, PARTITIONS);
        eprintln!("round {round} (seed {seed}): killed after {wait:?}; committed {done:?}");
    }
    // Then a second member joins mid-stream: the revoke commits the first one's
    // transaction before its partitions move.
    let mut first = spawn_sluice(&pipeline, &log);
    produce(&broker.address, TOPIC, sent[RECORDS..].to_vec())
        .await
        .unwrap();
    let hw = high_watermarks(&broker.address, TOPIC, PARTITIONS);
    let second_file = out.path().join("eos-1.yaml");
    std::fs::copy(&pipeline, &second_file).unwrap();
    patch(&second_file, "sluice-eos-0", "sluice-eos-1");
    let second_log = out.path().join("second.log");
    let mut second = spawn_sluice(&second_file, &second_log);
    let caught_up = common::eventually(Duration::from_secs(180), || {
        committed(&broker.address, "eos", TOPIC, PARTITIONS) == hw
    })
    .await;
    let status = terminate(&mut first, Duration::from_secs(60));
    let second_status = terminate(&mut second, Duration::from_secs(60));
    let marks = committed_marks(&broker.address, "eos", TOPIC, PARTITIONS);
    let tail = log_tail(
        &[&log, &second_log],
        &["ERROR", "WARN", "transaction", "revoked", "assigned"],
        60,
    );
    assert!(
        caught_up,
        "the transactions commit every offset; log tail (newest first):\n{tail}"
    );
    assert!(
        status.is_some_and(|s| s.success()) && second_status.is_some_and(|s| s.success()),
        "SIGTERM exits 0: {status:?} {second_status:?}\n{tail}"
    );
    let expected: Vec<String> = hw
        .iter()
        .map(|o| format!("sluice.through={}", o - 1))
        .collect();
    assert_eq!(
        marks, expected,
        "each offset carries the last source offset whose output is committed"
    );

    let ids = |messages: &[common::ReadMessage]| {
        let mut ids: std::collections::HashMap<String, usize> = Default::default();
        for m in messages {
            let row: serde_json::Value = serde_json::from_slice(&m.payload).unwrap();
            *ids.entry(row["id"].as_str().unwrap().to_owned())
                .or_default() += 1;
        }
        ids
    };
    let committed_view = read_topic_to_end(
        &broker.address,
        &[("isolation.level", "read_committed")],
        "clean",
        Duration::from_secs(60),
    );
    let everything = read_topic_to_end(
        &broker.address,
        &[("isolation.level", "read_uncommitted")],
        "clean",
        Duration::from_secs(60),
    );
    eprintln!(
        "output topic: {} messages committed, {} written in all (aborted transactions included)",
        committed_view.len(),
        everything.len()
    );
    let seen = ids(&committed_view);
    assert_eq!(
        seen.len(),
        good,
        "every good record's output is committed (seed {seed})"
    );
    let twice: Vec<_> = seen.iter().filter(|(_, &n)| n > 1).take(5).collect();
    assert!(
        twice.is_empty(),
        "no output is committed twice (seed {seed}): {twice:?}"
    );
    assert_eq!(committed_view.len(), good);

    let rows = read_dataset(&out.path().join("feedback"));
    let in_parquet = count_strings(&rows, "id");
    assert_eq!(
        in_parquet.len(),
        good,
        "the Parquet sink beside it has every record"
    );
    assert!(in_parquet.values().all(|&n| n == 1), "and each once");
}

/// The metadata of the group's committed offsets, per partition.
fn committed_marks(brokers: &str, group: &str, topic: &str, partitions: i32) -> Vec<String> {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    let consumer: BaseConsumer = client_with(brokers, &[])
        .set("group.id", group)
        .create()
        .unwrap();
    let mut list = rdkafka::TopicPartitionList::new();
    for p in 0..partitions {
        list.add_partition(topic, p);
    }
    let committed = consumer
        .committed_offsets(list, Duration::from_secs(10))
        .unwrap();
    committed
        .elements()
        .iter()
        .map(|e| e.metadata().to_owned())
        .collect()
}

#[test]
fn exactly_once_mistakes_name_their_key() {
    let out = tempfile::tempdir().unwrap();
    let file = TestPipeline {
        brokers: "localhost:9",
        topic: TOPIC,
        group: "eos-config",
        out: out.path(),
        output_topic: Some("clean"),
        dead_letter_topic: None,
        max_rows: 500,
        roll_age: "300ms",
        properties: &[],
    }
    .write();
    let good = std::fs::read_to_string(&file).unwrap();
    let sink = "  - kafka:\n      topic: clean\n";
    for (to, expected) in [
        (
            "  - kafka:\n      topic: clean\n      commit_interval: 1s\n",
            "sinks[1].kafka.commit_interval: only with exactly_once: true",
        ),
        (
            "  - kafka:\n      topic: clean\n      exactly_once: true\n      commit_interval: 2h\n",
            "sinks[1].kafka.commit_interval: expected a duration from 10ms to 1m",
        ),
        (
            "  - kafka:\n      topic: clean\n      exactly_once: true\n      properties:\n        enable.idempotence: false\n",
            "sinks[1].kafka.properties.enable.idempotence: exactly_once needs the idempotent producer",
        ),
        (
            "  - kafka:\n      topic: clean\n      exactly_once: true\n  - kafka:\n      topic: other\n      exactly_once: true\n",
            "sinks[2].kafka.exactly_once: only one kafka sink can be exactly-once",
        ),
    ] {
        std::fs::write(&file, good.replace(sink, to)).unwrap();
        let error = sluice::pipeline::load(&file)
            .map(|_| ())
            .expect_err(expected)
            .to_string();
        assert!(error.contains(expected), "{expected}\n{error}");
    }
    std::fs::write(
        &file,
        good.replace(
            sink,
            "  - kafka:\n      topic: clean\n      exactly_once: true\n",
        ),
    )
    .unwrap();
    sluice::pipeline::load(&file).expect("one exactly-once sink loads");
}

/// `sluice bench --broker noida` starts its own broker process, loads every record into a
/// topic of the partitions asked for, and reports the raw consume rate and the pipeline's
/// rate over the same messages, each round (a raw read before each pipeline run and one
/// after the last), with the CPU seconds of both processes; the broker process is gone
/// afterwards.
#[test]
fn the_bench_measures_both_rates_on_a_broker_process_it_starts() {
    bench_on_a_broker_process("noida");
}

/// The same on Tansu (memory storage), the broker that leaves the cores to the consumer.
#[test]
fn the_bench_measures_both_rates_on_tansu() {
    bench_on_a_broker_process("tansu");
}

fn bench_on_a_broker_process(broker: &str) {
    let out = tempfile::tempdir().unwrap();
    let results = out.path().join("e2e.jsonl");
    let run = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args([
            "bench",
            "--broker",
            broker,
            "--partitions",
            "6",
            "--records",
            "20000",
            "--rounds",
            "2",
            "--out",
        ])
        .arg(out.path().join("bench"))
        .arg("--results")
        .arg(&results)
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let line = std::fs::read_to_string(&results).unwrap();
    let result: serde_json::Value = serde_json::from_str(line.trim()).unwrap();
    assert_eq!(result["broker"], broker);
    assert_eq!(result["partitions"], 6);
    assert_eq!(result["records"], 20_000);
    assert!(
        result["raw_consume_records_per_s"].as_f64().unwrap() > 0.0,
        "{result}"
    );
    assert!(
        result["pipeline_over_raw"].as_f64().unwrap() > 0.0,
        "{result}"
    );
    // The batched raw reader ran beside the usual one, each round.
    assert!(
        result["raw_batch_records_per_s"].as_f64().unwrap() > 0.0,
        "{result}"
    );
    assert!(
        result["pipeline_over_raw_batch"].as_f64().unwrap() > 0.0,
        "{result}"
    );
    let count = |key: &str| result[key].as_array().map_or(0, Vec::len);
    assert_eq!(count("raw_consume_runs"), 3, "{result}");
    assert_eq!(count("raw_batch_runs"), 3, "{result}");
    assert_eq!(count("pipeline_runs"), 2, "{result}");
    let cpu = &result["cpu_s"];
    for process in ["broker", "sluice"] {
        for (side, runs) in [("raw", 3), ("raw_batch", 3), ("pipeline", 2)] {
            let seconds = cpu[process][side]
                .as_array()
                .unwrap_or_else(|| panic!("{process}.{side}: {result}"));
            assert_eq!(seconds.len(), runs, "{process}.{side}: {result}");
            assert!(seconds.iter().all(|s| s.as_f64().is_some_and(|s| s >= 0.0)));
        }
    }
    // The pipeline decodes and writes Parquet: it uses CPU in this process.
    assert!(
        cpu["sluice"]["pipeline"][0].as_f64().unwrap() > 0.0,
        "{result}"
    );
    let rows: usize = read_dataset(&out.path().join("bench/feedback"))
        .iter()
        .map(|b| b.num_rows())
        .sum();
    assert_eq!(rows, 20_000, "every record in the dataset");
}

/// The last `count` lines of the logs (each headed by its file name) that hold one of
/// `words`, newest first: what a failure message shows of a run.
fn log_tail(logs: &[&Path], words: &[&str], count: usize) -> String {
    let mut lines = Vec::new();
    for log in logs {
        lines.push(format!("--- {} ---", log.display()));
        let text = std::fs::read_to_string(log).unwrap_or_default();
        lines.extend(
            text.lines()
                .filter(|l| words.iter().any(|w| l.contains(w)))
                .map(str::to_owned),
        );
    }
    lines
        .into_iter()
        .rev()
        .take(count)
        .collect::<Vec<_>>()
        .join("\n")
}

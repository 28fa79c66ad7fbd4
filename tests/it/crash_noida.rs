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
    let broker = Broker::start();
    broker.create_topic(TOPIC, PARTITIONS).await;

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
    let log_text = std::fs::read_to_string(&log).unwrap_or_default();
    let interesting = [
        "assigned",
        "revoked",
        "committed",
        "ERROR",
        "shutting",
        "failed",
        "skipped",
    ];
    let tail: String = log_text
        .lines()
        .filter(|l| interesting.iter().any(|w| l.contains(w)))
        .rev()
        .take(40)
        .collect::<Vec<_>>()
        .join("\n");
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

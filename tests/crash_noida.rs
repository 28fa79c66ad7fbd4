//! kill -9 loses nothing and duplicates nothing: the `sluice` binary runs against a
//! separate broker process (noida-db, installed from PyPI by `scripts/setup.sh`), is
//! killed at random moments and restarted, and the final Parquet dataset holds every
//! record exactly once with no temp file left behind.
//!
//! The broker binary is found through `SLUICE_NOIDA_DB`, else through the installed
//! `noida_db` Python package. The bootstrap address is all the test needs from it, so a
//! real Kafka broker drops in the same way.

mod common;

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::ClientConfig;

use common::*;
use sluice::sample::{produce, FeedbackGenerator};

const TOPIC: &str = "feedback";
const PARTITIONS: i32 = 4;
const RECORDS: usize = 100_000;

/// A noida-db broker process on a free loopback port; stopped when dropped.
struct Broker {
    child: Child,
    address: String,
    _data: tempfile::TempDir,
}

impl Broker {
    fn start() -> Broker {
        let binary = noida_binary();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let data = tempfile::tempdir().unwrap();
        let child = Command::new(&binary)
            .args([
                "start",
                "--only",
                "kafka",
                "--kafka-port",
                &port.to_string(),
                "--data-dir",
            ])
            .arg(data.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", binary.display()));
        let address = format!("127.0.0.1:{port}");
        let deadline = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect(&address).is_err() {
            assert!(Instant::now() < deadline, "noida-db did not open {address}");
            std::thread::sleep(Duration::from_millis(50));
        }
        Broker {
            child,
            address,
            _data: data,
        }
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        terminate(&mut self.child, Duration::from_secs(5));
    }
}

fn noida_binary() -> PathBuf {
    if let Ok(path) = std::env::var("SLUICE_NOIDA_DB") {
        return PathBuf::from(path);
    }
    let output = Command::new("python3")
        .args(["-c", "import noida_db, os; print(os.path.join(os.path.dirname(noida_db.__file__), 'noida-db'))"])
        .output()
        .expect("python3 is needed to find noida-db");
    let path = PathBuf::from(String::from_utf8_lossy(&output.stdout).trim());
    assert!(
        output.status.success() && path.exists(),
        "noida-db is not installed: run scripts/setup.sh (pip install noida-db==0.2.3)"
    );
    path
}

/// SIGTERM, then SIGKILL if the process has not exited within `grace`.
fn terminate(child: &mut Child, grace: Duration) -> Option<std::process::ExitStatus> {
    // SAFETY: sending a signal to our own child process id.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let deadline = Instant::now() + grace;
    while Instant::now() < deadline {
        if let Ok(Some(status)) = child.try_wait() {
            return Some(status);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
    None
}

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
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", &broker.address)
        .create()
        .unwrap();
    let created = admin
        .create_topics(
            &[NewTopic::new(TOPIC, PARTITIONS, TopicReplication::Fixed(1))],
            &AdminOptions::new(),
        )
        .await
        .unwrap();
    assert!(created.iter().all(|r| r.is_ok()), "{created:?}");

    let sent: Vec<_> = FeedbackGenerator::new(9, 0.01, 1_795_305_600_000, 2_000)
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

    let seed: u64 = rand::random();
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
    assert_eq!(ids.len(), good, "every good record is in the dataset");
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

//! `sluice bench`: end-to-end throughput, topic -> Parquet with no model, measured side by
//! side with the raw rdkafka consume rate of the same messages in the same run.
//!
//! Both rates are taken on the same in-process mock cluster from the first record to the
//! last (connection and group-join time excluded). The raw rate is a plain consumer that
//! reads every message and touches its payload: the ceiling sluice's source could reach.
//! Results are appended as one JSON line to a results file so runs can be compared.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::mocking::MockCluster;
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use serde::Serialize;

use crate::demo::{self, DemoError, DEMO_PARTITIONS, DEMO_TOPIC};
use crate::sample::{self, FeedbackGenerator};

#[derive(Debug, Clone, Serialize)]
pub struct BenchResult {
    /// `e2e/PIPELINE` (`e2e/bench` is topic -> Parquet with no model).
    pub bench: String,
    pub unix_time: i64,
    pub git_rev: Option<String>,
    pub profile: &'static str,
    pub records: u64,
    pub payload_bytes: u64,
    pub raw_consume_records_per_s: f64,
    pub pipeline_records_per_s: f64,
    pub pipeline_over_raw: f64,
    pub parquet_files: u64,
    pub parquet_bytes: u64,
}

impl std::fmt::Display for BenchResult {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "records                 {}", self.records)?;
        writeln!(
            f,
            "raw rdkafka consume     {:.0} records/s",
            self.raw_consume_records_per_s
        )?;
        writeln!(
            f,
            "sluice {:<17}{:.0} records/s",
            self.bench, self.pipeline_records_per_s
        )?;
        write!(f, "ratio pipeline/raw      {:.3}", self.pipeline_over_raw)
    }
}

/// Runs the bench with `pipeline_file` (its `SLUICE_OUT` set to `out`).
pub async fn run(pipeline_file: &Path, out: &Path, records: u64) -> Result<BenchResult, DemoError> {
    let cluster = MockCluster::new(1)?;
    cluster.create_topic(DEMO_TOPIC, DEMO_PARTITIONS, 1)?;
    let brokers = cluster.bootstrap_servers();
    let generated: Vec<_> =
        FeedbackGenerator::new(7, 0.0, chrono::Utc::now().timestamp_millis(), 10)
            .take(records as usize)
            .collect();
    let payload_bytes = generated.iter().map(|r| r.payload.len() as u64).sum();
    let produced = sample::produce(&brokers, DEMO_TOPIC, generated).await?;

    let raw_elapsed = {
        let brokers = brokers.clone();
        tokio::task::spawn_blocking(move || raw_consume(&brokers, produced))
            .await
            .map_err(|e| crate::runtime::RunError::Task(e.to_string()))??
    };
    let pipeline = demo::load_pipeline(pipeline_file, &brokers, out)?;
    let bench = format!("e2e/{}", pipeline.name());
    let (stats, pipeline_elapsed) =
        demo::run_until_consumed(pipeline, produced, Duration::from_secs(600)).await?;
    let raw_rate = produced as f64 / raw_elapsed.as_secs_f64().max(1e-9);
    let pipeline_rate = produced as f64 / pipeline_elapsed.as_secs_f64().max(1e-9);
    Ok(BenchResult {
        bench,
        unix_time: chrono::Utc::now().timestamp(),
        git_rev: git_rev(),
        profile: if cfg!(debug_assertions) {
            "debug"
        } else {
            "release"
        },
        records: produced,
        payload_bytes,
        raw_consume_records_per_s: raw_rate,
        pipeline_records_per_s: pipeline_rate,
        pipeline_over_raw: pipeline_rate / raw_rate,
        parquet_files: stats.parquet_files,
        parquet_bytes: stats.parquet_bytes,
    })
}

/// Reads every message of the demo topic with a plain consumer; time from first to last.
fn raw_consume(brokers: &str, expected: u64) -> Result<Duration, rdkafka::error::KafkaError> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", "sluice-bench-raw")
        .set("enable.auto.commit", "false")
        .create()?;
    let mut assignment = TopicPartitionList::new();
    for partition in 0..DEMO_PARTITIONS {
        assignment.add_partition_offset(DEMO_TOPIC, partition, Offset::Beginning)?;
    }
    consumer.assign(&assignment)?;
    let (mut seen, mut bytes, mut first) = (0u64, 0usize, None);
    let deadline = Instant::now() + Duration::from_secs(300);
    while seen < expected && Instant::now() < deadline {
        if let Some(message) = consumer.poll(Duration::from_millis(100)) {
            let message = message?;
            first.get_or_insert_with(Instant::now);
            bytes += message.payload().map_or(0, <[u8]>::len);
            seen += 1;
        }
    }
    tracing::debug!(seen, bytes, "raw consume done");
    Ok(first.map(|t| t.elapsed()).unwrap_or_default())
}

fn git_rev() -> Option<String> {
    let output = std::process::Command::new("git")
        .args(["rev-parse", "--short", "HEAD"])
        .output()
        .ok()?;
    output
        .status
        .success()
        .then(|| String::from_utf8_lossy(&output.stdout).trim().to_owned())
}

/// Appends `result` as one JSON line to `file`.
pub fn append_result(file: &PathBuf, result: &BenchResult) -> std::io::Result<()> {
    if let Some(dir) = file.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let mut handle = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(file)?;
    writeln!(handle, "{}", serde_json::to_string(result)?)
}

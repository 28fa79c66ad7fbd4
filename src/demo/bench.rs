//! `sluice bench`: end-to-end throughput, topic -> Parquet with no model, measured side by
//! side with the raw rdkafka consume rate of the same messages in the same run.
//!
//! Both rates are taken on the same broker from the first record to the last (connection
//! and group-join time excluded): the in-process mock cluster by default (quick; it keeps
//! only 5 MB per partition), or with `--broker noida` / `--broker tansu` a broker process
//! the bench starts itself, loaded with every record first, for long runs (millions of
//! records, many partitions). The raw rate is a plain group consumer (rdkafka's defaults) that reads
//! every message and touches its payload: the ceiling sluice's source could reach. It is
//! measured both ways a consumer can read ([`raw_read`]): one `poll` per message, the usual
//! way (the ratio's denominator, as the issue defines it), and many messages per call from
//! a fetch queue of its own, as sluice's source reads (reported beside it). A broker
//! process shares the machine's cores with both sides, so each side starts once it is
//! quiet and its CPU seconds during each are reported beside the rates.
//! Results are appended as one JSON line to a results file so runs can be compared.

use std::io::Write;
use std::path::Path;
use std::time::Duration;

use rdkafka::mocking::MockCluster;
use serde::Serialize;

use crate::demo::broker::{Broker, Program};
use crate::demo::feeds::feedback::{self, FeedbackGenerator};
use crate::demo::raw_read::{self, ReadMode};
use crate::demo::{self, DemoError};
use crate::telemetry::StatsSnapshot;

/// Where the bench's topic lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum BrokerKind {
    /// librdkafka's in-process mock cluster.
    Mock,
    /// A noida-db broker process (started and stopped by the bench).
    Noida,
    /// A Tansu broker process with memory storage (started and stopped by the bench).
    Tansu,
}

impl std::str::FromStr for BrokerKind {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        match text {
            "mock" => Ok(BrokerKind::Mock),
            "noida" => Ok(BrokerKind::Noida),
            "tansu" => Ok(BrokerKind::Tansu),
            other => Err(format!("`{other}`: expected mock, noida or tansu")),
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct BenchResult {
    /// `e2e/PIPELINE` (`e2e/bench` is topic -> Parquet with no model).
    pub bench: String,
    /// Where the outputs went (`SLUICE_OUT`: a directory or an object-store URL).
    pub out: String,
    pub unix_time: i64,
    pub git_rev: Option<String>,
    pub profile: &'static str,
    pub broker: BrokerKind,
    pub partitions: i32,
    pub records: u64,
    pub payload_bytes: u64,
    /// The median of [`Self::raw_consume_runs`]; None when the records were produced
    /// beside the pipeline (too many to load first).
    pub raw_consume_records_per_s: Option<f64>,
    /// Each raw read's rate: one before each pipeline run and, on a broker process, one
    /// after the last.
    pub raw_consume_runs: Vec<f64>,
    /// The median of [`Self::raw_batch_runs`].
    pub raw_batch_records_per_s: Option<f64>,
    /// Each raw read's rate when it takes many messages per call, as sluice's source
    /// does; right after each raw read above.
    pub raw_batch_runs: Vec<f64>,
    /// The median of [`Self::pipeline_runs`].
    pub pipeline_records_per_s: f64,
    /// Each pipeline run's rate (one per round).
    pub pipeline_runs: Vec<f64>,
    /// The pipeline's median over the raw reads' (one poll per message).
    pub pipeline_over_raw: Option<f64>,
    /// The pipeline's median over the batched raw reads'.
    pub pipeline_over_raw_batch: Option<f64>,
    pub parquet_files: u64,
    pub parquet_bytes: u64,
    /// Where each infer stage ran (`stages[1].infer=cuda:0`); empty without models.
    pub inference: Vec<String>,
    /// CPU seconds used while each side ran, per process.
    pub cpu_s: CpuSeconds,
    /// CPUs the process could use, to tell machines apart when comparing runs.
    pub host_cpus: usize,
}

/// CPU seconds used while each side ran: by the broker process, which shares the
/// machine's cores with both sides, and by this process (the raw reader, or the
/// pipeline).
#[derive(Debug, Clone, Default, Serialize)]
pub struct CpuSeconds {
    /// The broker process (empty on the mock cluster, which runs in this process).
    pub broker: SideSeconds,
    /// This process.
    pub sluice: SideSeconds,
}

/// One process's CPU seconds during each run of each side.
#[derive(Debug, Clone, Default, Serialize)]
pub struct SideSeconds {
    /// During each raw read, in [`BenchResult::raw_consume_runs`]'s order.
    pub raw: Vec<f64>,
    /// During each batched raw read, in [`BenchResult::raw_batch_runs`]'s order.
    pub raw_batch: Vec<f64>,
    /// During each pipeline run, in [`BenchResult::pipeline_runs`]'s order.
    pub pipeline: Vec<f64>,
}

/// The two sides of the comparison.
#[derive(Debug, Clone, Copy)]
enum Side {
    Raw,
    RawBatch,
    Pipeline,
}

impl SideSeconds {
    fn of(&mut self, side: Side) -> &mut Vec<f64> {
        match side {
            Side::Raw => &mut self.raw,
            Side::RawBatch => &mut self.raw_batch,
            Side::Pipeline => &mut self.pipeline,
        }
    }
}

/// Runs `run` as one run of `side`: once the broker is quiet, counting both processes'
/// CPU seconds into `cpu`.
async fn measured<T>(
    broker: &BenchBroker,
    cpu: &mut CpuSeconds,
    side: Side,
    run: impl std::future::Future<Output = T>,
) -> T {
    broker.wait_quiet(QUIET_LIMIT).await;
    let start = (broker.cpu_time(), own_cpu_time());
    let output = run.await;
    let since = |now: Option<Duration>, then: Option<Duration>| {
        Some(now?.saturating_sub(then?).as_secs_f64())
    };
    cpu.broker
        .of(side)
        .extend(since(broker.cpu_time(), start.0));
    cpu.sluice.of(side).extend(since(own_cpu_time(), start.1));
    output
}

/// The longest a run waits for the broker process to go quiet.
const QUIET_LIMIT: Duration = Duration::from_secs(120);

/// This process's CPU time so far (every thread).
fn own_cpu_time() -> Option<Duration> {
    crate::demo::broker::process_cpu_time(std::process::id())
}

impl std::fmt::Display for BenchResult {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "records                 {}", self.records)?;
        if !self.inference.is_empty() {
            writeln!(f, "inference               {}", self.inference.join(", "))?;
        }
        let each = |values: &[f64], precision: usize| {
            let values: Vec<String> = values.iter().map(|v| format!("{v:.precision$}")).collect();
            values.join(" / ")
        };
        if let Some(raw) = self.raw_consume_records_per_s {
            writeln!(
                f,
                "raw rdkafka consume     {raw:.0} records/s (median of {})",
                each(&self.raw_consume_runs, 0)
            )?;
        }
        if let Some(raw) = self.raw_batch_records_per_s {
            writeln!(
                f,
                "raw, batched reads      {raw:.0} records/s (median of {})",
                each(&self.raw_batch_runs, 0)
            )?;
        }
        write!(
            f,
            "sluice {:<16} {:.0} records/s",
            self.bench, self.pipeline_records_per_s
        )?;
        if self.pipeline_runs.len() > 1 {
            write!(f, " (median of {})", each(&self.pipeline_runs, 0))?;
        }
        if let Some(ratio) = self.pipeline_over_raw {
            write!(f, "\nratio pipeline/raw      {ratio:.3}")?;
        }
        if let Some(ratio) = self.pipeline_over_raw_batch {
            write!(f, "\nratio pipeline/batched  {ratio:.3}")?;
        }
        for (process, seconds) in [
            ("this process", &self.cpu_s.sluice),
            ("broker process", &self.cpu_s.broker),
        ] {
            if !seconds.pipeline.is_empty() {
                write!(
                    f,
                    "\nCPU s, {process:<17}raw {}, batched {}, pipeline {}",
                    each(&seconds.raw, 2),
                    each(&seconds.raw_batch, 2),
                    each(&seconds.pipeline, 2)
                )?;
            }
        }
        Ok(())
    }
}

/// Runs the bench with `pipeline_file` (its `SLUICE_OUT` set to `out`), fed what the demo
/// feeds it (generated feedback, or generated process readings for a window over
/// `torque`). With `export_input`, the payloads are also written there as JSON lines, so
/// a baseline outside sluice can process exactly the same records.
pub async fn run(
    pipeline_file: &Path,
    out: &Path,
    records: u64,
    export_input: Option<&Path>,
    broker: BrokerKind,
    partitions: i32,
    rounds: usize,
) -> Result<BenchResult, DemoError> {
    let rounds = rounds.max(1);
    let kind = broker;
    let broker = BenchBroker::start(kind)?;
    let brokers = broker.address.clone();
    let mut pipeline = demo::load_pipeline(pipeline_file, &brokers, out)?;
    // A dataset left by an earlier run would already hold these offsets (a fresh broker
    // numbers them the same): the pipeline would skip every row and write nothing.
    demo::clear_earlier_output(&pipeline)?;
    broker.prepare(&mut pipeline);
    let topic = demo::source_topic(&pipeline);
    broker.create_topic(&topic, partitions).await?;
    let now = chrono::Utc::now().timestamp_millis();
    let generated: Vec<_> = match demo::Feed::of(&pipeline) {
        demo::Feed::Feedback | demo::Feed::Reviews => FeedbackGenerator::new(7, 0.0, now, 10)
            .take(records as usize)
            .collect(),
        demo::Feed::Process => demo::process_readings(7, records, now),
        demo::Feed::Bearings => return Err(DemoError::NoBenchFeed(pipeline.name().to_owned())),
    };
    if let Some(file) = export_input {
        export(file, &generated).map_err(|source| DemoError::Output {
            path: file.to_owned(),
            source,
        })?;
    }
    let payload_bytes: u64 = generated.iter().map(|r| r.payload.len() as u64).sum();
    let bench = format!("e2e/{}", pipeline.name());
    let timeout = Duration::from_secs(3600);
    // Each pipeline run counts afresh (the run ends when its count reaches the records).
    let mut counters = std::sync::Arc::new(crate::telemetry::Stats::default());
    let fits = broker.is_process() || payload_bytes <= PARTITION_BUDGET * partitions as u64;
    let mut raw_runs = Vec::new();
    let mut batch_runs = Vec::new();
    let mut pipeline_runs = Vec::new();
    let mut cpu_s = CpuSeconds::default();
    let (produced, raw_rate, stats) = if fits {
        // Everything fits in the broker's log: load the topic, then, each round, read it
        // raw and run the pipeline over it; on a broker process also read it raw once
        // more at the end, so that every pipeline run lies between two raw reads.
        let mut produced = 0;
        let mut rest = generated;
        while !rest.is_empty() {
            let tail = rest.split_off(rest.len().min(PRODUCE_CHUNK));
            produced += feedback::produce(&brokers, &topic, rest).await?;
            rest = tail;
        }
        // Each run starts against a quiet broker and its CPU time is counted (see
        // `Broker::wait_quiet`); both sides read as a group member does.
        let raw_read = |mode: ReadMode, run: usize| {
            let (brokers, topic) = (brokers.clone(), topic.clone());
            let settings = broker.consumer_settings();
            async move {
                let elapsed = tokio::task::spawn_blocking(move || {
                    raw_read::read(mode, &brokers, settings, &topic, run, produced)
                })
                .await
                .map_err(crate::runtime::RunError::Task)??;
                Ok::<_, DemoError>(produced as f64 / elapsed.as_secs_f64().max(1e-9))
            }
        };
        let mut stats = StatsSnapshot::default();
        // Raw reads before each round and, on a broker process, once more after the last.
        let last = if broker.is_process() {
            rounds
        } else {
            rounds - 1
        };
        for round in 0..=last {
            for (mode, side, runs) in [
                (ReadMode::Poll, Side::Raw, &mut raw_runs),
                (ReadMode::Batch, Side::RawBatch, &mut batch_runs),
            ] {
                runs.push(measured(&broker, &mut cpu_s, side, raw_read(mode, round)).await?);
            }
            if round == rounds {
                break;
            }
            let mut pipeline = pipeline.clone();
            if round > 0 {
                // A group of its own (the last round's committed every offset) and an
                // empty output (the last round's files hold every offset already).
                let group = format!("{}-{round}", pipeline.config.group_id());
                let crate::config::SourceConfig::Kafka(source) = &mut pipeline.config.source;
                source.group_id = Some(group);
                demo::clear_earlier_output(&pipeline)?;
            }
            counters = std::sync::Arc::new(crate::telemetry::Stats::default());
            let run = demo::run_until_consumed(pipeline, produced, timeout, counters.clone());
            let (round_stats, elapsed) = measured(&broker, &mut cpu_s, Side::Pipeline, run).await?;
            pipeline_runs.push(produced as f64 / elapsed.as_secs_f64().max(1e-9));
            stats = round_stats;
        }
        (produced, median(&raw_runs), stats)
    } else {
        if rounds > 1 {
            return Err(DemoError::RoundsNeedLoadedTopic);
        }
        // More than the mock cluster keeps (5 MB per partition): produce beside the
        // pipeline, half a partition budget ahead of it. A raw read of the whole topic is
        // impossible then, so there is no raw rate.
        let average = payload_bytes / generated.len().max(1) as u64;
        let ahead = PARTITION_BUDGET / 2 * partitions as u64 / average.max(1);
        let (produced, stats, elapsed) = demo::run_replaying(
            pipeline,
            &brokers,
            &topic,
            generated,
            ahead,
            timeout,
            counters.clone(),
        )
        .await?;
        pipeline_runs.push(produced as f64 / elapsed.as_secs_f64().max(1e-9));
        (produced, None, stats)
    };
    let pipeline_rate = median(&pipeline_runs).unwrap_or_default();
    let batch_rate = median(&batch_runs);
    Ok(BenchResult {
        bench,
        out: out.display().to_string(),
        unix_time: chrono::Utc::now().timestamp(),
        git_rev: git_rev(),
        profile: if cfg!(debug_assertions) {
            "debug"
        } else {
            "release"
        },
        broker: kind,
        partitions,
        records: produced,
        payload_bytes,
        raw_consume_records_per_s: raw_rate,
        raw_consume_runs: raw_runs,
        raw_batch_records_per_s: batch_rate,
        raw_batch_runs: batch_runs,
        pipeline_records_per_s: pipeline_rate,
        pipeline_runs,
        pipeline_over_raw: raw_rate.map(|raw| pipeline_rate / raw),
        pipeline_over_raw_batch: batch_rate.map(|raw| pipeline_rate / raw),
        parquet_files: stats.parquet_files,
        parquet_bytes: stats.parquet_bytes,
        inference: counters.inference_devices(),
        cpu_s,
        host_cpus: std::thread::available_parallelism().map_or(1, |n| n.get()),
    })
}

/// The broker a bench runs against: the in-process mock cluster or a broker process
/// (stopped when dropped), and its bootstrap address.
pub(crate) struct BenchBroker {
    kind: BrokerKind,
    cluster: Option<MockCluster<'static, rdkafka::producer::DefaultProducerContext>>,
    process: Option<Broker>,
    pub(crate) address: String,
}

impl BenchBroker {
    pub(crate) fn start(kind: BrokerKind) -> Result<Self, DemoError> {
        let (cluster, process) = match kind {
            BrokerKind::Mock => (Some(MockCluster::new(1)?), None),
            BrokerKind::Noida => (None, Some(Broker::start_program(Program::NoidaDb)?)),
            BrokerKind::Tansu => (None, Some(Broker::start_program(Program::Tansu)?)),
        };
        let address = match (&cluster, &process) {
            (Some(cluster), _) => cluster.bootstrap_servers(),
            (_, Some(process)) => process.address.clone(),
            _ => unreachable!("one broker is started"),
        };
        Ok(BenchBroker {
            kind,
            cluster,
            process,
            address,
        })
    }

    pub(crate) fn is_process(&self) -> bool {
        self.process.is_some()
    }

    /// What every consumer of this broker needs (the pipeline's, the raw reader's, the
    /// latency bench's reader):
    /// - a broker process answers a fetch with everything it has, past
    ///   `fetch.max.bytes`: consumers must take responses that large;
    /// - Tansu completes a group join after half the session timeout (22 s at the default
    ///   45 s); a shorter one spares the wait, which is outside the timed span anyway.
    pub(crate) fn consumer_settings(&self) -> &'static [(&'static str, &'static str)] {
        const RECEIVE_MAX: (&str, &str) = ("receive.message.max.bytes", "2147483647");
        match self.kind {
            BrokerKind::Mock => &[],
            BrokerKind::Noida => &[RECEIVE_MAX],
            BrokerKind::Tansu => &[RECEIVE_MAX, ("session.timeout.ms", "6000")],
        }
    }

    /// Gives the pipeline's consumer [`Self::consumer_settings`] the pipeline does not set
    /// itself.
    pub(crate) fn prepare(&self, pipeline: &mut crate::pipeline::Pipeline) {
        let crate::config::SourceConfig::Kafka(source) = &mut pipeline.config.source;
        for (key, value) in self.consumer_settings() {
            source
                .properties
                .entry((*key).to_owned())
                .or_insert_with(|| crate::config::PropertyValue::Text((*value).to_owned()));
        }
    }

    /// The broker process's CPU time so far (None on the mock cluster).
    pub(crate) fn cpu_time(&self) -> Option<Duration> {
        self.process.as_ref().and_then(Broker::cpu_time)
    }

    /// Waits for a broker process to go quiet (see [`Broker::wait_quiet`]).
    pub(crate) async fn wait_quiet(&self, limit: Duration) {
        if let Some(process) = &self.process {
            if !process.wait_quiet(limit).await {
                tracing::warn!(?limit, "the broker process stayed busy; measuring anyway");
            }
        }
    }

    pub(crate) async fn create_topic(&self, topic: &str, partitions: i32) -> Result<(), DemoError> {
        match (&self.cluster, &self.process) {
            (Some(cluster), _) => cluster.create_topic(topic, partitions, 1)?,
            (_, Some(process)) => process.create_topic(topic, partitions).await?,
            _ => {}
        }
        Ok(())
    }
}

/// Payload bytes per partition the bench loads into the mock cluster at once; it keeps
/// 5 MB per partition and drops older log segments beyond that.
const PARTITION_BUDGET: u64 = 4 << 20;

/// Records handed to the producer at once while loading the topic.
const PRODUCE_CHUNK: usize = 100_000;

/// The middle value (the mean of the two middle ones for an even count); None for none.
fn median(values: &[f64]) -> Option<f64> {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let middle = sorted.len() / 2;
    match sorted.len() {
        0 => None,
        n if n % 2 == 1 => Some(sorted[middle]),
        _ => Some((sorted[middle - 1] + sorted[middle]) / 2.0),
    }
}

/// Writes each record's payload as one line.
fn export(file: &Path, records: &[feedback::SampleRecord]) -> std::io::Result<()> {
    if let Some(dir) = file.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let mut writer = std::io::BufWriter::new(std::fs::File::create(file)?);
    for record in records {
        writer.write_all(&record.payload)?;
        writer.write_all(b"\n")?;
    }
    writer.flush()
}

/// The checkout's commit, `-dirty` when a tracked file other than the benches' own
/// outputs has changed; None outside a git checkout.
pub(crate) fn git_rev() -> Option<String> {
    let git = |args: &[&str]| {
        let output = std::process::Command::new("git").args(args).output().ok()?;
        output
            .status
            .success()
            .then(|| String::from_utf8_lossy(&output.stdout).trim().to_owned())
    };
    let commit = git(&["rev-parse", "--short=7", "HEAD"])?;
    // What the benches write themselves (results, pictures) does not make a build dirty:
    // otherwise every run after the first on a commit would say so.
    let changed = git(&[
        "status",
        "--porcelain",
        "--untracked-files=no",
        "--",
        ":/",
        ":(top,exclude)benches/results",
        ":(top,exclude,glob)benches/*.png",
    ])?;
    Some(if changed.is_empty() {
        commit
    } else {
        format!("{commit}-dirty")
    })
}

/// Appends `result` as one JSON line to `file`.
pub fn append_result(file: &Path, result: &impl Serialize) -> std::io::Result<()> {
    if let Some(dir) = file.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let mut handle = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(file)?;
    writeln!(handle, "{}", serde_json::to_string(result)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_median_is_the_middle_value_or_the_mean_of_the_middle_two() {
        assert_eq!(median(&[]), None);
        assert_eq!(median(&[3.0]), Some(3.0));
        assert_eq!(median(&[9.0, 1.0, 4.0]), Some(4.0));
        assert_eq!(median(&[2.0, 8.0, 1.0, 4.0]), Some(3.0));
    }
}

//! `sluice demo`: the whole flow with no external service.
//!
//! Starts librdkafka's in-process mock cluster (it speaks the real Kafka protocol on a
//! loopback port), produces customer feedback including malformed records, runs a
//! pipeline (`pipelines/demo.yaml` by default) against it until every record is consumed,
//! shuts the pipeline down cleanly (flush, commit), reads the Parquet dataset back and
//! prints a summary.
//!
//! Pipelines with a `tokenize` stage (`--pipeline sentiment`) get real review texts
//! replayed from `data/reviews.jsonl` instead of generated feedback, and the summary
//! compares the labels the pipeline wrote with the reviews' own labels.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow::array::{Array, AsArray};
use rdkafka::mocking::MockCluster;
use tokio_util::sync::CancellationToken;

use crate::config::{self, ConfigError, StageConfig};
use crate::demo::feeds::feedback::{self, FeedbackGenerator};
use crate::demo::feeds::reviews::{self, ReviewsError};
use crate::demo::feeds::{ai4i, mfpt};
use crate::pipeline::Pipeline;
use crate::runtime::{self, RunError};
use crate::sink::parquet::read::count_rows;
use crate::telemetry::{Stats, StatsSnapshot};

pub mod bench;
pub mod broker;
mod drift_plot;
pub mod feeds;
pub mod latency;
mod raw_read;
mod summary;

pub use self::summary::{DemoSummary, LabelReport};

pub const DEMO_TOPIC: &str = "customer-feedback";
pub const DEMO_PARTITIONS: i32 = 4;

#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    #[error("Kafka: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("broker process")]
    Broker(#[from] broker::BrokerError),
    #[error(transparent)]
    Run(#[from] RunError),
    #[error("reading the dataset back: {0}")]
    ReadBack(#[from] parquet::errors::ParquetError),
    #[error(transparent)]
    Reviews(#[from] ReviewsError),
    #[error(transparent)]
    Signals(#[from] mfpt::SignalsError),
    #[error("{}: {source}", path.display())]
    Output {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{} is in the way of the demo's dataset and is not a sluice Parquet dataset; pass another --out", .0.display())]
    OutputInUse(PathBuf),
    #[error("`sluice bench` has no generated feed for pipeline `{0}` (bearing recordings are replayed by `sluice demo`)")]
    NoBenchFeed(String),
    #[error("`sluice bench --rounds` above 1 needs every record loaded first: use `--broker noida`, or fewer records (the mock cluster keeps 5 MB per partition)")]
    RoundsNeedLoadedTopic,
    #[error("`sluice bench --rate` measures latency up to an output topic, and pipeline `{0}` writes to none (add a `kafka` sink)")]
    NoOutputTopic(String),
    #[error("the pipeline consumed {consumed} of {expected} records within {timeout:?}")]
    Timeout {
        consumed: u64,
        expected: u64,
        timeout: Duration,
    },
}

/// What `sluice demo` does (also its command-line arguments).
#[derive(Debug, Clone, clap::Args)]
pub struct DemoOptions {
    /// A pipeline name in pipelines/ (`demo`, `sentiment`) or a file.
    #[arg(long, default_value = "sentiment")]
    pub pipeline: PathBuf,
    /// Output directory (the pipeline's `${SLUICE_OUT}`). Default: out/NAME.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Records to produce. Default: 50000 generated, or 2000 replayed reviews.
    #[arg(long)]
    pub records: Option<u64>,
    /// Fraction of records deliberately malformed.
    #[arg(long, default_value_t = 0.01)]
    pub malformed_rate: f64,
    /// Labelled reviews replayed for pipelines that tokenize text.
    #[arg(long, default_value = "data/reviews.jsonl")]
    pub reviews: PathBuf,
    /// Which split of the reviews or bearing recordings to replay: `holdout` or `train`.
    #[arg(long, default_value = "holdout")]
    pub split: String,
    /// The MFPT bearing recordings, replayed for pipelines that window `vibration`.
    #[arg(long, default_value = "data/signals")]
    pub signals: PathBuf,
    /// Partitions of the demo's source topic (1 keeps the replay's order end to end).
    #[arg(long, default_value_t = DEMO_PARTITIONS)]
    pub partitions: i32,
    /// Draw every infer stage's drift gauges (PSI per signal, window after window) into
    /// this PNG when the run ends.
    #[arg(long)]
    pub drift_plot: Option<PathBuf>,
}

impl DemoOptions {
    /// The pipeline file: a name in `pipelines/` or a path.
    pub fn pipeline_file(&self) -> PathBuf {
        pipeline_path(&self.pipeline)
    }

    /// `out`, or `out/NAME` after the pipeline file.
    pub fn out_dir(&self) -> PathBuf {
        self.out.clone().unwrap_or_else(|| {
            let file = self.pipeline_file();
            let stem = file.file_stem().unwrap_or_default().to_string_lossy();
            PathBuf::from(format!("out/{stem}"))
        })
    }
}

/// `--pipeline sentiment` means `pipelines/sentiment.yaml`; a path is taken as it is.
pub fn pipeline_path(arg: &Path) -> PathBuf {
    let text = arg.to_string_lossy();
    if text.contains('/') || text.ends_with(".yaml") || text.ends_with(".yml") {
        arg.to_owned()
    } else {
        PathBuf::from(format!("pipelines/{text}.yaml"))
    }
}

/// Loads a pipeline file with `SLUICE_BROKERS` and `SLUICE_OUT` pointing at the given
/// cluster and directory (other variables come from the environment).
pub fn load_pipeline(file: &Path, brokers: &str, out: &Path) -> Result<Pipeline, ConfigError> {
    let out = out.display().to_string();
    crate::pipeline::load_with_vars(file, &|name| match name {
        "SLUICE_BROKERS" => Some(brokers.to_owned()),
        "SLUICE_OUT" => Some(out.clone()),
        other => std::env::var(other).ok(),
    })
}

/// Runs `pipeline` until it has consumed `expected` records, then shuts it down cleanly.
/// Counts into `stats`; returns their final values and the time from the first consumed
/// record to the end of the clean shutdown (so group-join time is not counted as
/// processing time).
pub async fn run_until_consumed(
    pipeline: Pipeline,
    expected: u64,
    timeout: Duration,
    stats: Arc<Stats>,
) -> Result<(StatsSnapshot, Duration), DemoError> {
    consume(pipeline, expected, timeout, stats).await
}

/// Runs `pipeline` while producing `records` to `topic`, at most `max_ahead` records in
/// front of the pipeline's consumer (see [`feedback::produce_paced`]), until it has
/// consumed them all, counting into `stats`. Returns the records produced, the counters
/// and the busy time.
pub async fn run_replaying(
    pipeline: Pipeline,
    brokers: &str,
    topic: &str,
    records: Vec<feedback::SampleRecord>,
    max_ahead: u64,
    timeout: Duration,
    stats: Arc<Stats>,
) -> Result<(u64, StatsSnapshot, Duration), DemoError> {
    let expected = records.len() as u64;
    let pace = feedback::Pace {
        consumer: stats.clone(),
        max_ahead,
    };
    let producing = feedback::produce_paced(brokers, topic, records, Some(pace));
    let (produced, consumed) = tokio::join!(producing, consume(pipeline, expected, timeout, stats));
    let (snapshot, busy) = consumed?;
    Ok((produced?, snapshot, busy))
}

async fn consume(
    pipeline: Pipeline,
    expected: u64,
    timeout: Duration,
    stats: Arc<Stats>,
) -> Result<(StatsSnapshot, Duration), DemoError> {
    let shutdown = CancellationToken::new();
    let running = {
        let (stats, shutdown) = (stats.clone(), shutdown.clone());
        tokio::spawn(async move { runtime::run(&pipeline, shutdown, stats).await })
    };
    let deadline = Instant::now() + timeout;
    let mut first_record = None;
    loop {
        let consumed = stats.snapshot().records_in;
        if consumed > 0 && first_record.is_none() {
            first_record = Some(Instant::now());
        }
        if consumed >= expected || running.is_finished() {
            break;
        }
        if Instant::now() >= deadline {
            shutdown.cancel();
            let _ = running.await;
            return Err(DemoError::Timeout {
                consumed,
                expected,
                timeout,
            });
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    shutdown.cancel();
    let snapshot = running.await.map_err(RunError::Task)??;
    let busy = first_record.map(|t| t.elapsed()).unwrap_or_default();
    Ok((snapshot, busy))
}

/// What the demo feeds a pipeline with, chosen from its stages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Feed {
    /// Generated customer feedback (with malformed records).
    Feedback,
    /// Labelled review texts (pipelines that tokenize).
    Reviews,
    /// MFPT bearing vibration chunks (a window stage over `vibration`).
    Bearings,
    /// AI4I-style process readings (a window stage over `torque`).
    Process,
}

impl Feed {
    pub fn of(pipeline: &Pipeline) -> Feed {
        let windows_over = |column: &str| {
            pipeline.config.stages.iter().any(
                |s| matches!(s, StageConfig::Window(w) if w.only_with.iter().any(|c| c == column)),
            )
        };
        if windows_over("vibration") {
            Feed::Bearings
        } else if windows_over("torque") {
            Feed::Process
        } else if pipeline
            .config
            .stages
            .iter()
            .any(|s| matches!(s, StageConfig::Tokenize(_)))
        {
            Feed::Reviews
        } else {
            Feed::Feedback
        }
    }
}

/// How far the bearing replay may run ahead of the pipeline: 32 chunks of at most ~100 KB
/// stay well inside the 5 MB the mock cluster keeps per partition.
const BEARING_RECORDS_AHEAD: u64 = 32;

/// The topic the demo and the bench feed: the pipeline's first source topic.
pub fn source_topic(pipeline: &Pipeline) -> String {
    let config::SourceConfig::Kafka(source) = &pipeline.config.source;
    source
        .topics
        .first()
        .map_or(DEMO_TOPIC, String::as_str)
        .to_owned()
}

/// `count` generated process readings of [`PROCESS_MACHINES`] machines, one per machine
/// and minute, ending about `now`. Seeds give different machines' luck (the demo trains
/// on seed 1 and evaluates on seed 2).
pub fn process_readings(seed: u64, count: u64, now: i64) -> Vec<feedback::SampleRecord> {
    let minutes = (count as i64 / PROCESS_MACHINES as i64).max(1);
    let start = whole_hour(now - minutes * 60_000);
    ai4i::ProcessGenerator::new(seed, PROCESS_MACHINES, start, 60_000)
        .take(count as usize)
        .map(|r| r.to_record())
        .collect()
}

/// `ms` rounded down to a whole hour: sensor feeds start on one, so every run cuts the
/// same windows out of the same readings (windows are aligned to the epoch).
fn whole_hour(ms: i64) -> i64 {
    ms.div_euclid(3_600_000) * 3_600_000
}

/// Removes the datasets an earlier demo run of `pipeline` wrote: each run starts a fresh
/// cluster whose offsets begin at zero again, and the Parquet sink would skip those
/// offsets as already written. Only directories sluice's Parquet sink made (with its
/// `_sluice` bookkeeping) are removed; anything else in the way is an error.
pub(crate) fn clear_earlier_output(pipeline: &Pipeline) -> Result<(), DemoError> {
    for dataset in pipeline.sinks.parquet_roots() {
        let io = |source| DemoError::Output {
            path: dataset.to_owned(),
            source,
        };
        let Ok(mut entries) = std::fs::read_dir(dataset) else {
            continue; // not there yet
        };
        if entries.next().is_none() {
            continue;
        }
        if !dataset
            .join(crate::sink::parquet::commit::META_DIR)
            .is_dir()
        {
            return Err(DemoError::OutputInUse(dataset.to_owned()));
        }
        std::fs::remove_dir_all(dataset).map_err(io)?;
    }
    Ok(())
}

/// Machines in the generated process feed.
pub const PROCESS_MACHINES: usize = 100;

/// Runs the demo end to end.
///
/// Long on purpose: the demo is one story told in order (cluster, feed, run, read back,
/// summary); splitting it would scatter that story.
pub async fn run(options: &DemoOptions) -> Result<DemoSummary, DemoError> {
    let started = Instant::now();
    let cluster = MockCluster::new(1)?;
    let brokers = cluster.bootstrap_servers();
    let out = options.out_dir();
    let pipeline = load_pipeline(&options.pipeline_file(), &brokers, &out)?;
    clear_earlier_output(&pipeline)?;
    let topic = source_topic(&pipeline);
    cluster.create_topic(&topic, options.partitions.clamp(1, 1_000), 1)?;

    let feed = Feed::of(&pipeline);
    let now = chrono::Utc::now().timestamp_millis();
    let day = 86_400_000;
    let mut truth: Option<std::collections::HashMap<String, String>> = None;
    let records: Vec<feedback::SampleRecord> = match feed {
        Feed::Reviews => {
            let count = options.records.unwrap_or(2_000);
            // Spread over the last two days, so the dataset has more than one date partition.
            let spacing = (2 * day / count.max(1) as i64).max(1);
            let replayed = reviews::spread(
                &reviews::load(&options.reviews, &options.split)?,
                count as usize,
            );
            truth = Some(
                replayed
                    .iter()
                    .map(|r| (r.id.clone(), r.label.clone()))
                    .collect(),
            );
            reviews::replay(&replayed, options.malformed_rate, now - 2 * day, spacing)
        }
        Feed::Feedback => {
            let count = options.records.unwrap_or(50_000);
            let spacing = (2 * day / count.max(1) as i64).max(1);
            FeedbackGenerator::new(42, options.malformed_rate, now - 2 * day, spacing)
                .take(count as usize)
                .collect()
        }
        Feed::Bearings => {
            let split = if options.split == "train" {
                "train"
            } else {
                "test"
            };
            let recordings = mfpt::load(&options.signals, split)?;
            let mut records = mfpt::replay(&recordings, whole_hour(now - day), 50);
            if let Some(limit) = options.records {
                records.truncate(limit as usize);
            }
            records
        }
        Feed::Process => process_readings(
            if options.split == "train" { 1 } else { 2 },
            options.records.unwrap_or(60_000),
            now,
        ),
    };
    let timeout = Duration::from_secs(300);
    let live = Arc::new(Stats::default());
    let (produced, stats) = if feed == Feed::Bearings {
        // Vibration chunks are large: replay them beside the pipeline, not all up front.
        let (produced, stats, _) = run_replaying(
            pipeline.clone(),
            &brokers,
            &topic,
            records,
            BEARING_RECORDS_AHEAD,
            timeout,
            live.clone(),
        )
        .await?;
        (produced, stats)
    } else {
        let produced = feedback::produce(&brokers, &topic, records).await?;
        tracing::info!(produced, topic, "sample records produced");
        (
            produced,
            run_until_consumed(pipeline.clone(), produced, timeout, live.clone())
                .await?
                .0,
        )
    };
    if let Some(path) = &options.drift_plot {
        drift_plot::draw(path, &pipeline.config.name, &live.drift_history()).map_err(|source| {
            DemoError::Output {
                path: path.clone(),
                source,
            }
        })?;
    }
    let (rows_read_back, dead_letters_read_back) = read_back(&pipeline)?;
    let labels = match (feed, truth) {
        (Feed::Reviews, Some(truth)) => Some(compare_labels(&pipeline, &|batch, row| {
            let id = batch.column_by_name("id")?.as_string::<i32>().value(row);
            truth.get(id).cloned()
        })?),
        (Feed::Bearings, _) => Some(compare_labels(&pipeline, &|batch, row| {
            let condition = batch.column_by_name("condition")?.as_string::<i32>();
            condition
                .is_valid(row)
                .then(|| condition.value(row).to_owned())
        })?),
        (Feed::Process, _) => Some(compare_labels(&pipeline, &|batch, row| {
            let failed = batch
                .column_by_name("machine_failure_max")?
                .as_primitive::<arrow::datatypes::Float64Type>()
                .value(row);
            Some(if failed > 0.0 { "failure" } else { "ok" }.to_owned())
        })?),
        _ => None,
    };
    let alerts_topic = pipeline.config.sinks.iter().find_map(|sink| match sink {
        config::SinkConfig::Kafka(out) if out.alert.is_some() => Some(out.topic.as_str()),
        _ => None,
    });
    let alerts = match alerts_topic {
        Some(topic) => Some(read_alerts(&brokers, topic)?),
        None => None,
    };
    Ok(DemoSummary {
        produced,
        stats,
        rows_read_back,
        dead_letters_read_back,
        elapsed: started.elapsed(),
        out: out.clone(),
        labels,
        alerts,
    })
}

/// Alerts sent to `topic`, counted by machine.
fn read_alerts(
    brokers: &str,
    topic: &str,
) -> Result<std::collections::BTreeMap<String, u64>, DemoError> {
    let mut alerts = std::collections::BTreeMap::new();
    for message in read_topic(brokers, topic)? {
        let value: serde_json::Value = serde_json::from_slice(&message).unwrap_or_default();
        if let Some(machine) = value["machine_id"].as_str() {
            *alerts.entry(machine.to_owned()).or_default() += 1;
        }
    }
    Ok(alerts)
}

/// Every message of `topic` (all partitions, from the beginning to the current end).
pub fn read_topic(brokers: &str, topic: &str) -> Result<Vec<Vec<u8>>, DemoError> {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::Message;
    let consumer: BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", "sluice-demo-reader")
        .set("enable.auto.commit", "false")
        .create()?;
    let metadata = consumer.fetch_metadata(Some(topic), Duration::from_secs(10))?;
    let mut list = rdkafka::TopicPartitionList::new();
    let mut remaining = 0i64;
    for partition in metadata.topics().iter().flat_map(|t| t.partitions()) {
        let (low, high) =
            consumer.fetch_watermarks(topic, partition.id(), Duration::from_secs(10))?;
        remaining += high - low;
        list.add_partition_offset(topic, partition.id(), rdkafka::Offset::Beginning)?;
    }
    consumer.assign(&list)?;
    let mut messages = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while (messages.len() as i64) < remaining && Instant::now() < deadline {
        if let Some(message) = consumer.poll(Duration::from_millis(200)) {
            messages.push(message?.payload().unwrap_or_default().to_vec());
        }
    }
    Ok(messages)
}

/// Compares the `label` column of the first Parquet sink with the true label of each row
/// (`truth` returns None for rows whose truth is unknown).
fn compare_labels(
    pipeline: &Pipeline,
    truth: &dyn Fn(&arrow::array::RecordBatch, usize) -> Option<String>,
) -> Result<LabelReport, DemoError> {
    use arrow::array::AsArray;
    let mut report = LabelReport::default();
    let Some(root) = pipeline.sinks.parquet_sinks().next() else {
        return Ok(report);
    };
    let files = crate::sink::parquet::read::dataset_files(root)
        .map_err(|e| parquet::errors::ParquetError::External(Box::new(e)))?;
    for file in files {
        for batch in crate::sink::parquet::read::read_file(&file)? {
            let Some(labels) = batch.column_by_name("label") else {
                continue;
            };
            let versions = batch.column_by_name("model_version");
            for row in 0..batch.num_rows() {
                let label = labels.as_string::<i32>().value(row);
                if let Some(expected) = truth(&batch, row) {
                    report.compared += 1;
                    report.agreed += u64::from(expected == label);
                    *report
                        .pairs
                        .entry((expected, label.to_owned()))
                        .or_default() += 1;
                }
                if let Some(v) = versions {
                    let v = v.as_string::<i32>().value(row);
                    if !report.versions.iter().any(|known| known == v) {
                        report.versions.push(v.to_owned());
                    }
                }
            }
        }
    }
    Ok(report)
}

/// Rows in the pipeline's first Parquet sink and in its dead-letter dataset.
fn read_back(pipeline: &Pipeline) -> Result<(u64, u64), DemoError> {
    let rows = match pipeline.sinks.parquet_sinks().next() {
        Some(root) => count_rows(root)?,
        None => 0,
    };
    let dead = match &pipeline.config.dead_letter.parquet {
        Some(p) => count_rows(&p.path)?,
        None => 0,
    };
    Ok((rows, dead))
}

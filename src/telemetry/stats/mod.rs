//! The counters and histograms of one pipeline run.
//!
//! Every value is a `prometheus-client` metric (an atomic behind an `Arc`), so the run
//! summary, the tests and the `/metrics` endpoint read the very same numbers: components
//! count into [`Stats`], [`Stats::registry`] exposes clones of the same metrics. Labels stay
//! bounded: stages and partitions come from the pipeline file and the assignment, and a
//! dead letter is counted by its kind ([`DeadLetterKind`](crate::batch::DeadLetterKind)), not
//! its free-text reason.

mod models;

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use super::labels::*;

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

fn latency_histogram() -> Histogram {
    // 0.25 ms .. ~8 s
    Histogram::new(exponential_buckets(0.000_25, 2.0, 16))
}

fn rows_histogram() -> Histogram {
    // 1 .. 65,536 rows
    Histogram::new(exponential_buckets(1.0, 2.0, 17))
}

/// The run's metrics. Cheap to update from any thread.
#[derive(Debug)]
pub struct Stats {
    records_in: Counter,
    bytes_in: Counter,
    batches: Counter,
    batch_records: Histogram,
    rows_out: Counter,
    dead_letters: Counter,
    dead_letters_by: Family<DeadLetterLabels, Counter>,
    stage_rows_in: Family<StageLabels, Counter>,
    stage_rows_out: Family<StageLabels, Counter>,
    stage_seconds: HistogramFamily<StageLabels>,
    inference_batch_rows: HistogramFamily<StageLabels>,
    inference_seconds: HistogramFamily<StageLabels>,
    model_info: Family<ModelLabels, Gauge>,
    model_rejected: Family<ModelLabels, Counter>,
    drift: Family<DriftLabels, Gauge<f64, std::sync::atomic::AtomicU64>>,
    drift_rows: Family<ModelLabels, Gauge>,
    /// The last drift windows, oldest first (at most `DRIFT_HISTORY`): for plots.
    drift_history: Mutex<std::collections::VecDeque<DriftWindow>>,
    drift_events: Family<DriftEventLabels, Counter>,
    live_accuracy: Family<LiveAccuracyLabels, Gauge<f64, std::sync::atomic::AtomicU64>>,
    live_accuracy_rows: Family<ModelLabels, Gauge>,
    label_join: Family<LabelJoinLabels, Counter>,
    shadow_rows: Family<ModelLabels, Counter>,
    shadow_agreed: Family<ModelLabels, Counter>,
    retrain_runs: Family<RetrainLabels, Counter>,
    /// Woken when an infer stage raises drift (a `retrain: {on_drift: true}` job waits).
    pub drift_raised: tokio::sync::Notify,
    consumer_lag: Family<PartitionLabels, Gauge>,
    commits: Family<CommitLabels, Counter>,
    commit_seconds: HistogramFamily<ModeLabels>,
    parquet_files: Counter,
    parquet_rows: Counter,
    parquet_bytes: Counter,
    kafka_messages: Counter,
    sink_rejected: Family<SinkReasonLabels, Counter>,
    dead_letters_truncated: Family<SinkLabels, Counter>,
    kafka_errors: Family<ClientErrorLabels, Counter>,
    records_skipped: Counter,
    records_skipped_by: Family<SkipLabels, Counter>,
    brokers_up: Family<ClientLabels, Gauge>,
    /// The model version each infer stage serves now (to retire the old label set).
    serving: Mutex<HashMap<String, ModelLabels>>,
    /// `STAGE=DEVICE` for each infer stage, once the chain is built.
    inference_devices: Mutex<Vec<String>>,
    pub readiness: super::health::Readiness,
    /// Where `/metrics` is served, once bound.
    pub http_addr: std::sync::OnceLock<std::net::SocketAddr>,
}

impl Default for Stats {
    fn default() -> Self {
        Stats {
            records_in: Counter::default(),
            bytes_in: Counter::default(),
            batches: Counter::default(),
            batch_records: rows_histogram(),
            rows_out: Counter::default(),
            dead_letters: Counter::default(),
            dead_letters_by: Family::default(),
            stage_rows_in: Family::default(),
            stage_rows_out: Family::default(),
            stage_seconds: Family::new_with_constructor(latency_histogram),
            inference_batch_rows: Family::new_with_constructor(rows_histogram),
            inference_seconds: Family::new_with_constructor(latency_histogram),
            model_info: Family::default(),
            drift: Family::default(),
            drift_rows: Family::default(),
            drift_history: Mutex::default(),
            drift_events: Family::default(),
            live_accuracy: Family::default(),
            live_accuracy_rows: Family::default(),
            label_join: Family::default(),
            shadow_rows: Family::default(),
            shadow_agreed: Family::default(),
            retrain_runs: Family::default(),
            drift_raised: tokio::sync::Notify::new(),
            model_rejected: Family::default(),
            consumer_lag: Family::default(),
            commits: Family::default(),
            commit_seconds: Family::new_with_constructor(latency_histogram),
            parquet_files: Counter::default(),
            parquet_rows: Counter::default(),
            parquet_bytes: Counter::default(),
            kafka_messages: Counter::default(),
            sink_rejected: Family::default(),
            dead_letters_truncated: Family::default(),
            kafka_errors: Family::default(),
            records_skipped: Counter::default(),
            records_skipped_by: Family::default(),
            brokers_up: Family::default(),
            serving: Mutex::default(),
            inference_devices: Mutex::default(),
            readiness: Default::default(),
            http_addr: std::sync::OnceLock::new(),
        }
    }
}

/// How many drift windows [`Stats::drift_history`] keeps.
const DRIFT_HISTORY: usize = 4096;

/// One full drift window of one model version: PSI per signal.
#[derive(Debug, Clone, PartialEq)]
pub struct DriftWindow {
    pub stage: String,
    pub model: String,
    pub version: String,
    pub rows: u64,
    pub signals: Vec<(String, f64)>,
}

/// The metrics an infer stage updates for each model run.
#[derive(Debug, Clone)]
pub struct InferenceMetrics {
    pub batch_rows: Histogram,
    pub seconds: Histogram,
}

impl InferenceMetrics {
    pub fn observe(&self, rows: usize, elapsed: Duration) {
        self.batch_rows.observe(rows as f64);
        self.seconds.observe(elapsed.as_secs_f64());
    }
}

/// A point-in-time copy of the run's counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct StatsSnapshot {
    pub records_in: u64,
    pub bytes_in: u64,
    pub batches: u64,
    pub rows_decoded: u64,
    pub dead_letters: u64,
    /// Records never read: deleted by retention before the pipeline got to them.
    pub records_skipped: u64,
    pub parquet_files: u64,
    pub parquet_rows: u64,
    pub parquet_bytes: u64,
    pub kafka_messages: u64,
}

impl Stats {
    pub fn record_batch_in(&self, records: u64, bytes: u64) {
        self.batches.inc();
        self.batch_records.observe(records as f64);
        self.records_in.inc_by(records);
        self.bytes_in.inc_by(bytes);
    }

    /// A batch left the stage chain with `rows` rows and these dead letters.
    pub fn record_processed<'a>(
        &self,
        rows: u64,
        dead_letters: impl IntoIterator<Item = &'a crate::batch::DeadLetter>,
    ) {
        self.rows_out.inc_by(rows);
        for letter in dead_letters {
            self.dead_letters.inc();
            self.dead_letters_by
                .get_or_create(&DeadLetterLabels {
                    stage: letter.stage.clone(),
                    reason: letter.kind.as_str().to_owned(),
                })
                .inc();
        }
    }

    /// One stage processed a batch.
    pub fn record_stage(&self, stage: &str, rows_in: usize, rows_out: usize, elapsed: Duration) {
        let labels = StageLabels {
            stage: stage.to_owned(),
        };
        self.stage_rows_in
            .get_or_create(&labels)
            .inc_by(rows_in as u64);
        self.stage_rows_out
            .get_or_create(&labels)
            .inc_by(rows_out as u64);
        self.stage_seconds
            .get_or_create(&labels)
            .observe(elapsed.as_secs_f64());
    }

    /// The histograms `stage`'s model runs update.
    pub fn inference(&self, stage: &str) -> InferenceMetrics {
        let labels = StageLabels {
            stage: stage.to_owned(),
        };
        InferenceMetrics {
            batch_rows: self.inference_batch_rows.get_or_create(&labels).clone(),
            seconds: self.inference_seconds.get_or_create(&labels).clone(),
        }
    }

    pub fn set_consumer_lag(&self, topic: &str, partition: i32, lag: i64) {
        self.consumer_lag
            .get_or_create(&PartitionLabels {
                topic: topic.to_owned(),
                partition: partition.to_string(),
            })
            .set(lag);
    }

    /// The partition is no longer this member's: its lag is someone else's to report.
    pub fn forget_partition(&self, topic: &str, partition: i32) {
        self.consumer_lag.remove(&PartitionLabels {
            topic: topic.to_owned(),
            partition: partition.to_string(),
        });
    }

    /// An offset commit finished; `elapsed` runs from when its offsets became durable (auto
    /// commits) or from the commit call (sync commits).
    pub fn record_commit(&self, mode: &str, ok: bool, elapsed: Duration) {
        self.commits
            .get_or_create(&CommitLabels {
                mode: mode.to_owned(),
                outcome: if ok { "ok" } else { "failed" }.to_owned(),
            })
            .inc();
        self.commit_seconds
            .get_or_create(&ModeLabels {
                mode: mode.to_owned(),
            })
            .observe(elapsed.as_secs_f64());
    }

    pub fn record_files(&self, files: u64, rows: u64, bytes: u64) {
        self.parquet_files.inc_by(files);
        self.parquet_rows.inc_by(rows);
        self.parquet_bytes.inc_by(bytes);
    }

    pub fn record_messages(&self, messages: u64) {
        self.kafka_messages.inc_by(messages);
    }

    /// `sink` could not take a row (see `sink::kafka`).
    pub fn record_sink_rejected(&self, sink: &str, reason: &str) {
        self.sink_rejected
            .get_or_create(&SinkReasonLabels {
                sink: sink.to_owned(),
                reason: reason.to_owned(),
            })
            .inc();
    }

    /// `records` of a partition were never read (`offset_reset`: deleted by retention).
    pub fn record_skipped(&self, topic: &str, partition: i32, reason: &str, records: u64) {
        self.records_skipped.inc_by(records);
        self.records_skipped_by
            .get_or_create(&SkipLabels {
                topic: topic.to_owned(),
                partition: partition.to_string(),
                reason: reason.to_owned(),
            })
            .inc_by(records);
    }

    /// librdkafka reported a global error (`code`) for `client`.
    pub fn record_kafka_error(&self, client: &str, code: &str) {
        self.kafka_errors
            .get_or_create(&ClientErrorLabels {
                client: client.to_owned(),
                error: code.to_owned(),
            })
            .inc();
    }

    /// Brokers `client` has an established (authenticated) connection to.
    pub fn set_brokers_up(&self, client: &str, up: i64) {
        self.brokers_up
            .get_or_create(&ClientLabels {
                client: client.to_owned(),
            })
            .set(up);
    }

    /// `sink` cut `count` dead-letter payloads to its `max_payload_bytes`.
    pub fn record_truncated(&self, sink: &str, count: u64) {
        self.dead_letters_truncated
            .get_or_create(&SinkLabels {
                sink: sink.to_owned(),
            })
            .inc_by(count);
    }

    /// Records consumed so far.
    pub fn records_in(&self) -> u64 {
        self.records_in.get()
    }

    pub fn set_inference_devices(&self, devices: Vec<String>) {
        if let Ok(mut held) = self.inference_devices.lock() {
            *held = devices;
        }
    }

    /// Where each infer stage runs (`stages[1].infer=cuda:0`), once the chain is built.
    pub fn inference_devices(&self) -> Vec<String> {
        self.inference_devices
            .lock()
            .map(|held| held.clone())
            .unwrap_or_default()
    }

    pub fn snapshot(&self) -> StatsSnapshot {
        StatsSnapshot {
            records_in: self.records_in.get(),
            bytes_in: self.bytes_in.get(),
            batches: self.batches.get(),
            rows_decoded: self.rows_out.get(),
            dead_letters: self.dead_letters.get(),
            records_skipped: self.records_skipped.get(),
            parquet_files: self.parquet_files.get(),
            parquet_rows: self.parquet_rows.get(),
            parquet_bytes: self.parquet_bytes.get(),
            kafka_messages: self.kafka_messages.get(),
        }
    }

    /// A registry of these metrics (shared, not copied), prefixed `sluice_`.
    ///
    /// Long on purpose: one `register` call per metric with its help text: a table, read as
    /// one.
    pub fn registry(&self, pipeline: &str) -> Registry {
        let mut registry = Registry::with_prefix_and_labels(
            "sluice",
            [("pipeline".into(), pipeline.to_owned().into())].into_iter(),
        );
        let r = &mut registry;
        r.register(
            "records_in",
            "Records consumed from Kafka",
            self.records_in.clone(),
        );
        r.register(
            "bytes_in",
            "Payload bytes consumed from Kafka",
            self.bytes_in.clone(),
        );
        r.register(
            "batches",
            "Micro-batches cut by the source",
            self.batches.clone(),
        );
        r.register(
            "batch_records",
            "Records per micro-batch",
            self.batch_records.clone(),
        );
        r.register(
            "rows_out",
            "Rows that left the stage chain for the sinks",
            self.rows_out.clone(),
        );
        r.register(
            "dead_letters",
            "Records sent to the dead-letter sinks, by stage and kind of reason",
            self.dead_letters_by.clone(),
        );
        r.register(
            "stage_rows_in",
            "Rows into each stage",
            self.stage_rows_in.clone(),
        );
        r.register(
            "stage_rows_out",
            "Rows out of each stage (windows aggregate, so fewer)",
            self.stage_rows_out.clone(),
        );
        r.register(
            "stage_seconds",
            "Time each stage took per batch",
            self.stage_seconds.clone(),
        );
        r.register(
            "inference_batch_rows",
            "Rows per model run",
            self.inference_batch_rows.clone(),
        );
        r.register(
            "inference_seconds",
            "Time per model run",
            self.inference_seconds.clone(),
        );
        r.register(
            "model_info",
            "The model version each infer stage serves (value 1)",
            self.model_info.clone(),
        );
        r.register(
            "drift",
            "Population stability index of a model version's last window against its reference profile, per signal (predicted, top_score, feature:NAME, embedding_cosine); above 0.25 is a large shift",
            self.drift.clone(),
        );
        r.register(
            "drift_events",
            "Drift raised or cleared (hysteresis between infer.drift.raise_above and clear_below)",
            self.drift_events.clone(),
        );
        r.register(
            "retrain_runs",
            "Runs of the pipeline's retrain job, by trigger (schedule, drift) and outcome (published, kept, failed)",
            self.retrain_runs.clone(),
        );
        r.register(
            "live_accuracy",
            "A model version's accuracy, macro_f1 and calibration_error (expected calibration error, 10 bins) on its last window of predictions joined to delayed labels (infer.accuracy)",
            self.live_accuracy.clone(),
        );
        r.register(
            "live_accuracy_window_rows",
            "Labelled predictions in the window the live accuracy gauges were computed on",
            self.live_accuracy_rows.clone(),
        );
        r.register(
            "label_join",
            "Predictions and labels of the live-accuracy join by outcome: joined, prediction_expired, label_expired, label_stale, label_unknown, label_bad, dropped",
            self.label_join.clone(),
        );
        r.register(
            "shadow_rows",
            "Rows a shadow model version ran on beside the served one",
            self.shadow_rows.clone(),
        );
        r.register(
            "shadow_agreed",
            "Of those, rows where the shadow's top class equals the served one (agreement = agreed / rows)",
            self.shadow_agreed.clone(),
        );
        r.register(
            "drift_window_rows",
            "Rows in the window the drift gauges were computed on",
            self.drift_rows.clone(),
        );
        r.register(
            "model_versions_rejected",
            "Model versions an infer stage's watcher refused (the serving version stayed)",
            self.model_rejected.clone(),
        );
        r.register(
            "consumer_lag",
            "Records behind the partition's high watermark (from librdkafka statistics)",
            self.consumer_lag.clone(),
        );
        r.register(
            "commits",
            "Offset commits by mode and outcome",
            self.commits.clone(),
        );
        r.register(
            "commit_seconds",
            "Offset commit latency (auto: from durable to committed; sync: the call)",
            self.commit_seconds.clone(),
        );
        r.register(
            "parquet_files",
            "Parquet files published",
            self.parquet_files.clone(),
        );
        r.register(
            "records_skipped",
            "Records never read, by partition and reason (offset_reset: deleted by retention first)",
            self.records_skipped_by.clone(),
        );
        r.register(
            "kafka_errors",
            "Global errors librdkafka reported per client (it retries them itself), by error code",
            self.kafka_errors.clone(),
        );
        r.register(
            "kafka_brokers_up",
            "Brokers each Kafka client has an established connection to (from librdkafka statistics)",
            self.brokers_up.clone(),
        );
        r.register(
            "sink_rejected",
            "Rows an output topic could not take (too large, invalid), left out of that topic only",
            self.sink_rejected.clone(),
        );
        r.register(
            "dead_letter_payloads_truncated",
            "Dead letters whose payload was cut to the Kafka dead-letter sink's max_payload_bytes",
            self.dead_letters_truncated.clone(),
        );
        r.register(
            "parquet_rows",
            "Rows in published Parquet files",
            self.parquet_rows.clone(),
        );
        r.register(
            "parquet_bytes",
            "Bytes of published Parquet files",
            self.parquet_bytes.clone(),
        );
        r.register(
            "kafka_messages",
            "Messages delivered to Kafka output topics",
            self.kafka_messages.clone(),
        );
        registry
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_registry_shows_what_was_counted_and_retires_old_model_versions() {
        let stats = Stats::default();
        stats.record_batch_in(3, 30);
        stats.record_stage("stages[0].tokenize", 3, 2, Duration::from_millis(2));
        stats.record_model_serving("stages[1].infer", "head", "1");
        stats.record_model_serving("stages[1].infer", "head", "2");
        stats.set_consumer_lag("t", 0, 7);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &stats.registry("p")).unwrap();
        assert!(
            text.contains("sluice_records_in_total{pipeline=\"p\"} 3"),
            "{text}"
        );
        assert!(
            text.contains(
                "sluice_stage_rows_out_total{pipeline=\"p\",stage=\"stages[0].tokenize\"} 2"
            ),
            "{text}"
        );
        assert!(text.contains("version=\"2\"} 1"), "{text}");
        assert!(!text.contains("version=\"1\""), "{text}");
        assert!(
            text.contains("sluice_consumer_lag{pipeline=\"p\",topic=\"t\",partition=\"0\"} 7"),
            "{text}"
        );
    }
}

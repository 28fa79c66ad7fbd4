//! The counters and histograms of one pipeline run.
//!
//! Every value is a `prometheus-client` metric (an atomic behind an `Arc`), so the run
//! summary, the tests and the `/metrics` endpoint read the very same numbers: components
//! count into [`Stats`], [`Stats::registry`] exposes clones of the same metrics. Labels stay
//! bounded: stages and partitions come from the pipeline file and the assignment, and a
//! dead letter's free-text reason is reduced to a [`reason_kind`].

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Mutex;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StageLabels {
    pub stage: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DeadLetterLabels {
    pub stage: String,
    pub reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ModelLabels {
    pub stage: String,
    pub model: String,
    pub version: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PartitionLabels {
    pub topic: String,
    pub partition: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CommitLabels {
    /// `auto` (librdkafka's periodic commit of stored offsets) or `sync` (on revoke and
    /// shutdown).
    pub mode: String,
    pub outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ModeLabels {
    pub mode: String,
}

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
    consumer_lag: Family<PartitionLabels, Gauge>,
    commits: Family<CommitLabels, Counter>,
    commit_seconds: HistogramFamily<ModeLabels>,
    parquet_files: Counter,
    parquet_rows: Counter,
    parquet_bytes: Counter,
    kafka_messages: Counter,
    /// The model version each infer stage serves now (to retire the old label set).
    serving: Mutex<HashMap<String, ModelLabels>>,
    /// `STAGE=DEVICE` for each infer stage, once the chain is built.
    inference_devices: Mutex<Vec<String>>,
    pub readiness: Readiness,
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
            consumer_lag: Family::default(),
            commits: Family::default(),
            commit_seconds: Family::new_with_constructor(latency_histogram),
            parquet_files: Counter::default(),
            parquet_rows: Counter::default(),
            parquet_bytes: Counter::default(),
            kafka_messages: Counter::default(),
            serving: Mutex::default(),
            inference_devices: Mutex::default(),
            readiness: Readiness::default(),
            http_addr: std::sync::OnceLock::new(),
        }
    }
}

/// What `/health` waits for: the models are loaded (the stage chain is built) and the
/// consumer has had its first partition assignment.
#[derive(Debug, Default)]
pub struct Readiness {
    stages_ready: AtomicBool,
    assigned: AtomicBool,
}

impl Readiness {
    pub fn set_stages_ready(&self) {
        self.stages_ready.store(true, Relaxed);
    }

    pub fn set_assigned(&self) {
        self.assigned.store(true, Relaxed);
    }

    /// `Ok` when ready, else what is still missing.
    pub fn check(&self) -> Result<(), &'static str> {
        match (self.stages_ready.load(Relaxed), self.assigned.load(Relaxed)) {
            (true, true) => Ok(()),
            (false, _) => Err("loading stages and models"),
            (true, false) => Err("waiting for the first partition assignment"),
        }
    }
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
    pub parquet_files: u64,
    pub parquet_rows: u64,
    pub parquet_bytes: u64,
    pub kafka_messages: u64,
}

/// A dead letter's reason reduced to a short, bounded label value.
pub fn reason_kind(reason: &str) -> &'static str {
    const KINDS: [(&str, &str); 9] = [
        ("not valid JSON", "malformed_json"),
        ("does not match schema", "schema_mismatch"),
        ("UTF-8", "invalid_utf8"),
        ("tombstone", "tombstone"),
        ("max_record_bytes", "oversized"),
        ("failed on this row", "model_failed"),
        ("text is", "empty_text"),
        ("is null", "null_field"),
        ("late", "late_event"),
    ];
    KINDS
        .iter()
        .find(|(needle, _)| reason.contains(needle))
        .map_or("other", |(_, kind)| kind)
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
        dead_letters: impl IntoIterator<Item = &'a crate::dead_letter::DeadLetter>,
    ) {
        self.rows_out.inc_by(rows);
        for letter in dead_letters {
            self.dead_letters.inc();
            self.dead_letters_by
                .get_or_create(&DeadLetterLabels {
                    stage: letter.stage.clone(),
                    reason: reason_kind(&letter.reason).to_owned(),
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

    /// `stage` now serves `model` at `version`.
    pub fn record_model_serving(&self, stage: &str, model: &str, version: &str) {
        let labels = ModelLabels {
            stage: stage.to_owned(),
            model: model.to_owned(),
            version: version.to_owned(),
        };
        let mut serving = self.serving.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(previous) = serving.insert(stage.to_owned(), labels.clone()) {
            self.model_info.remove(&previous);
        }
        self.model_info.get_or_create(&labels).set(1);
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
            parquet_files: self.parquet_files.get(),
            parquet_rows: self.parquet_rows.get(),
            parquet_bytes: self.parquet_bytes.get(),
            kafka_messages: self.kafka_messages.get(),
        }
    }

    /// A registry of these metrics (shared, not copied), prefixed `sluice_`.
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
    fn reasons_reduce_to_bounded_kinds() {
        let cases = [
            ("not valid JSON: expected value at line 1", "malformed_json"),
            ("does not match schema: field rating", "schema_mismatch"),
            ("record is not valid UTF-8: invalid byte", "invalid_utf8"),
            ("record has no value (tombstone)", "tombstone"),
            ("record is 20000 bytes, over max_record_bytes", "oversized"),
            (
                "model sentiment-head/2 failed on this row: NaN",
                "model_failed",
            ),
            ("text is empty", "empty_text"),
            ("key column `machine_id` is null", "null_field"),
            ("something new", "other"),
        ];
        for (reason, kind) in cases {
            assert_eq!(reason_kind(reason), kind, "{reason}");
        }
    }

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

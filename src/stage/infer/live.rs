//! Live accuracy: the stage's predictions joined to delayed labels from a topic
//! (`infer.accuracy`), scored per model version over tumbling windows of labelled rows.
//!
//! Every prediction with a `probabilities` output (served, canary or shadow) waits in a
//! [`Joiner`] under the row's id; a thread reads the labels topic (every partition, no
//! group: each replica sees every label and keeps those whose prediction it holds) and
//! joins them. When a version has `window` labelled rows, their accuracy, macro-F1 and
//! calibration error (the same [`Metrics`] the retrain gate uses) become the gauges
//! `sluice_live_accuracy{stage,model,version,metric}` and, with `accuracy.topic`, a JSON
//! row. What waits is memory only: a restart forgets the predictions still waiting.

use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use arrow::array::{Array, ArrayRef, AsArray};
use arrow::datatypes::{DataType, Float32Type};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};

use super::join::{Joined, Joiner, Prediction};
use crate::config::AccuracyConfig;
use crate::model::metrics::Metrics;
use crate::telemetry::Stats;

/// How long the labels thread waits for a message before it looks at the clock again.
const POLL: Duration = Duration::from_millis(200);
/// How often the labels topic's partitions are looked up again (new partitions, or a
/// topic that did not exist yet).
const REFRESH: Duration = Duration::from_secs(30);
/// Broker calls of the labels thread (metadata, offsets by time).
const CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// What the stage and the labels thread share.
struct Shared {
    stage: String,
    model: String,
    /// The model's classes, in output order.
    classes: Vec<String>,
    config: AccuracyConfig,
    joiner: Mutex<Joiner>,
    rows: super::topic_rows::TopicRows,
    stats: Arc<Stats>,
}

/// The stage's side: records predictions; owns the labels thread (stopped on drop).
pub(crate) struct LiveAccuracy {
    shared: Arc<Shared>,
    /// The id column, by index into the stage's input rows.
    id: usize,
    _stop: mpsc::Sender<()>,
}

impl LiveAccuracy {
    /// Starts reading `config.labels.topic` with `consumer`; `producer` sends the rows
    /// when `config.topic` is set. `classes`: the model's labels in output order.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn start(
        stage: String,
        model: String,
        classes: Vec<String>,
        config: AccuracyConfig,
        id: usize,
        consumer: &rdkafka::ClientConfig,
        producer: &rdkafka::ClientConfig,
        stats: Arc<Stats>,
    ) -> Result<Self, rdkafka::error::KafkaError> {
        let rows = super::topic_rows::TopicRows::new(config.topic.as_deref(), producer)?;
        let consumer: BaseConsumer = consumer.create()?;
        let shared = Arc::new(Shared {
            joiner: Mutex::new(Joiner::new(
                config.horizon,
                config.max_pending,
                config.window,
            )),
            stage,
            model,
            classes,
            config,
            rows,
            stats,
        });
        let (stop, stopped) = mpsc::channel();
        let reader = shared.clone();
        std::thread::Builder::new()
            .name("sluice-labels".into())
            .spawn(move || read_labels(&reader, &consumer, &stopped))
            .map_err(|e| {
                rdkafka::error::KafkaError::ClientCreation(format!(
                    "cannot start the labels thread: {e}"
                ))
            })?;
        Ok(LiveAccuracy {
            shared,
            id,
            _stop: stop,
        })
    }

    /// Records the predictions `version` (`NAME/VERSION`) made for `rows` (the stage's
    /// input rows of one lane) from its `probabilities` column.
    pub(crate) fn observe(&self, version: &Arc<str>, rows: &[ArrayRef], probabilities: &ArrayRef) {
        let (Some(ids), Some(list)) = (rows.get(self.id), probabilities.as_fixed_size_list_opt())
        else {
            return;
        };
        let Ok(ids) = arrow::compute::cast(ids, &DataType::Utf8) else {
            return;
        };
        let (ids, classes) = (ids.as_string::<i32>(), list.value_length() as usize);
        let Some(values) = list.values().as_primitive_opt::<Float32Type>() else {
            return;
        };
        let now = Instant::now();
        let mut full = Vec::new();
        {
            let mut joiner = self.shared.lock();
            for row in 0..list.len() {
                if ids.is_null(row) || list.is_null(row) {
                    continue;
                }
                let start = list.value_offset_at(row);
                let Some(probabilities) = values.values().get(start..start + classes) else {
                    continue;
                };
                let class = crate::model::argmax(probabilities);
                let prediction = Prediction {
                    version: version.clone(),
                    class,
                    confidence: probabilities[class],
                };
                full.extend(joiner.predict(ids.value(row), prediction, now));
            }
        }
        for (version, pairs) in full {
            self.shared.report(&version, &pairs);
        }
    }
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, Joiner> {
        self.joiner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Expires what waited too long and moves the counts to the metrics.
    fn tick(&self) {
        let counts = {
            let mut joiner = self.lock();
            joiner.expire(Instant::now());
            joiner.take_counts()
        };
        let stage = &self.stage;
        for (outcome, n) in [
            ("joined", counts.joined),
            ("prediction_expired", counts.prediction_expired),
            ("label_expired", counts.label_expired),
            ("dropped", counts.dropped),
        ] {
            self.stats.record_label_join(stage, outcome, n);
        }
    }

    /// One label message: its id and class, or the outcome it is counted under.
    fn parse(&self, payload: Option<&[u8]>) -> Result<(String, usize), &'static str> {
        let value: serde_json::Value = payload
            .and_then(|p| serde_json::from_slice(p).ok())
            .ok_or("label_bad")?;
        let labels = &self.config.labels;
        let text = |field: &str| -> Option<String> {
            match value.get(field)? {
                serde_json::Value::String(s) => Some(s.clone()),
                serde_json::Value::Number(n) => Some(match n.as_i64() {
                    Some(i) => i.to_string(),
                    None => n.to_string(),
                }),
                serde_json::Value::Bool(b) => Some(b.to_string()),
                _ => None,
            }
        };
        let (Some(id), Some(label)) = (text(&labels.id), text(&labels.label)) else {
            return Err("label_bad");
        };
        let class_name = if labels.values.is_empty() {
            label.as_str()
        } else {
            labels.values.get(&label).ok_or("label_unknown")?.as_str()
        };
        let class = self
            .classes
            .iter()
            .position(|c| c == class_name)
            .ok_or("label_unknown")?;
        Ok((id, class))
    }

    /// A full window of `version`: gauges, a log line, and a row on `accuracy.topic`.
    fn report(&self, version: &str, pairs: &[Joined]) {
        let classes = self.classes.len();
        let mut confusion = vec![vec![0_usize; classes]; classes];
        for pair in pairs {
            if pair.truth < classes && pair.predicted < classes {
                confusion[pair.truth][pair.predicted] += 1;
            }
        }
        let metrics = Metrics::from_confusion(&self.classes, confusion, f64::NAN);
        let calibration_error = Metrics::calibration_error(
            pairs
                .iter()
                .map(|p| (f64::from(p.confidence), p.truth == p.predicted)),
        );
        let short = version.rsplit_once('/').map_or(version, |(_, v)| v);
        tracing::info!(stage = %self.stage, model = %self.model, version = short, rows = pairs.len(), accuracy = metrics.accuracy, macro_f1 = metrics.macro_f1, calibration_error, "live accuracy");
        self.stats.record_live_accuracy(
            &self.stage,
            &self.model,
            short,
            pairs.len() as u64,
            &[
                ("accuracy", metrics.accuracy),
                ("macro_f1", metrics.macro_f1),
                ("calibration_error", calibration_error),
            ],
        );
        let row = serde_json::json!({
            "stage": self.stage,
            "model": self.model,
            "version": short,
            "window_rows": pairs.len(),
            "accuracy": metrics.accuracy,
            "macro_f1": metrics.macro_f1,
            "calibration_error": calibration_error,
            "per_class": metrics.per_class,
            "confusion": metrics.confusion,
            "at": chrono::Utc::now().to_rfc3339(),
        });
        let key = format!("{}/{short}", self.model);
        self.rows.send(&self.stage, &key, &row);
    }
}

/// The labels thread: assigns every partition of the labels topic (from the first label
/// within the horizon), joins each label, expires what waited too long; ends when the
/// stage is dropped.
fn read_labels(shared: &Shared, consumer: &BaseConsumer, stopped: &mpsc::Receiver<()>) {
    let topic = shared.config.labels.topic.clone();
    let mut assigned: Vec<i32> = Vec::new();
    let mut refreshed: Option<Instant> = None;
    let mut warned = false;
    while !matches!(stopped.try_recv(), Err(mpsc::TryRecvError::Disconnected)) {
        if refreshed.is_none_or(|at| at.elapsed() >= REFRESH) {
            refreshed = Some(Instant::now());
            match assign_new_partitions(consumer, &topic, shared.config.horizon, &mut assigned) {
                Ok(()) => {}
                Err(e) if !warned => {
                    warned = true;
                    tracing::warn!(stage = %shared.stage, topic, error = %e, "live accuracy: cannot read the labels topic yet; trying again every 30s");
                }
                Err(_) => {}
            }
        }
        match consumer.poll(POLL) {
            Some(Ok(message)) => {
                let stale = message.timestamp().to_millis().is_some_and(|ms| {
                    let age = chrono::Utc::now().timestamp_millis().saturating_sub(ms);
                    u128::try_from(age).is_ok_and(|age| age > shared.config.horizon.as_millis())
                });
                let outcome = if stale {
                    Err("label_stale")
                } else {
                    shared.parse(message.payload())
                };
                match outcome {
                    Ok((id, class)) => {
                        let full = shared.lock().label(&id, class, Instant::now());
                        for (version, pairs) in full {
                            shared.report(&version, &pairs);
                        }
                    }
                    Err(outcome) => shared.stats.record_label_join(&shared.stage, outcome, 1),
                }
            }
            Some(Err(e)) => {
                tracing::debug!(stage = %shared.stage, topic, error = %e, "labels topic");
            }
            None => {}
        }
        shared.tick();
    }
}

/// Assigns the partitions of `topic` not in `assigned` yet: at the first offset whose
/// timestamp is within `horizon` (the end when there is none); partitions that appear
/// later start at their beginning.
fn assign_new_partitions(
    consumer: &BaseConsumer,
    topic: &str,
    horizon: Duration,
    assigned: &mut Vec<i32>,
) -> Result<(), rdkafka::error::KafkaError> {
    let metadata = consumer.fetch_metadata(Some(topic), CALL_TIMEOUT)?;
    let partitions: Vec<i32> = metadata
        .topics()
        .iter()
        .filter(|t| t.name() == topic && t.error().is_none())
        .flat_map(|t| t.partitions().iter().map(|p| p.id()))
        .filter(|p| !assigned.contains(p))
        .collect();
    if partitions.is_empty() {
        return if assigned.is_empty() {
            Err(rdkafka::error::KafkaError::MetadataFetch(
                rdkafka::types::RDKafkaErrorCode::UnknownTopicOrPartition,
            ))
        } else {
            Ok(())
        };
    }
    let mut starts = TopicPartitionList::new();
    if assigned.is_empty() {
        // The first assignment: read back as far as the horizon.
        let since = chrono::Utc::now().timestamp_millis()
            - i64::try_from(horizon.as_millis()).unwrap_or(i64::MAX);
        let mut wanted = TopicPartitionList::new();
        for &p in &partitions {
            wanted.add_partition_offset(topic, p, Offset::Offset(since.max(0)))?;
        }
        let found = consumer.offsets_for_times(wanted, CALL_TIMEOUT);
        for &p in &partitions {
            let offset = match found.as_ref().ok().and_then(|f| f.find_partition(topic, p)) {
                Some(e) if matches!(e.offset(), Offset::Offset(_)) => e.offset(),
                // No label that recent: from the end as it is now (a concrete offset, so
                // labels produced from here on are read whenever the fetch starts).
                Some(_) => Offset::Offset(consumer.fetch_watermarks(topic, p, CALL_TIMEOUT)?.1),
                None => Offset::Beginning,
            };
            starts.add_partition_offset(topic, p, offset)?;
        }
    } else {
        for &p in &partitions {
            starts.add_partition_offset(topic, p, Offset::Beginning)?;
        }
    }
    consumer.incremental_assign(&starts)?;
    assigned.extend(partitions);
    Ok(())
}

/// Checks `infer.accuracy` against the stage's input rows and the serving version's
/// manifest: the id column exists, the model has a mapped `probabilities` output and
/// class labels, and every `labels.values` target is one of them.
pub(super) fn check(
    config: &AccuracyConfig,
    outputs: &std::collections::BTreeMap<String, String>,
    input: &arrow::datatypes::Schema,
    manifest: &crate::model::Manifest,
    issues: &mut crate::stage::PlanIssues,
) {
    use crate::config::limits;
    issues.count("accuracy.window", config.window, 1, 10_000_000);
    issues.count("accuracy.max_pending", config.max_pending, 1, 100_000_000);
    issues.duration(
        "accuracy.horizon",
        config.horizon,
        limits::SECOND,
        limits::DAY * 30,
    );
    if config.labels.topic.is_empty() {
        issues.add("accuracy.labels.topic", "expected a topic name");
    }
    if config.topic.as_deref() == Some("") {
        issues.add("accuracy.topic", "expected a topic name");
    }
    if input.field_with_name(&config.id).is_err() {
        issues.unknown_column("accuracy.id", &config.id, input);
    }
    if !outputs.contains_key("probabilities") {
        issues.add(
            "accuracy",
            "live accuracy scores the model's `probabilities` output: map it under `outputs`",
        );
    }
    let Some(classes) = &manifest.labels else {
        issues.add(
            "accuracy",
            format!(
                "model `{}` names no classes (`labels` in its manifest): labels cannot be matched to its outputs",
                manifest.name
            ),
        );
        return;
    };
    for (value, class) in &config.labels.values {
        if !classes.contains(class) {
            issues.add(
                &format!("accuracy.labels.values.{value}"),
                format!(
                    "`{class}` is not one of the model's classes: {}",
                    classes.join(", ")
                ),
            );
        }
    }
}

//! The retrain job file: which dataset, which labels, which model, which trainer, and the
//! gate a candidate must pass to be published. Typed with `deny_unknown_fields`; loaded
//! with the same `${VAR}` interpolation and error reporting as pipeline files.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use super::metrics::GateMetric;
use super::trainer::TrainConfig;
use crate::config::{limits, typed, ConfigError, ConfigIssue, YamlFile};

/// A whole retrain job file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetrainJob {
    /// Job name, for logs.
    pub name: String,
    pub dataset: DatasetConfig,
    /// Model registry directory, relative to the job file. Default: `../models`.
    #[serde(default = "default_models")]
    pub models: PathBuf,
    pub model: ModelConfig,
    #[serde(default)]
    pub trainer: TrainConfig,
    #[serde(default)]
    pub gate: GateConfig,
}

/// Where the training rows come from and how they are labelled and split.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatasetConfig {
    /// A Hive-partitioned Parquet dataset (a sink's `path`), relative to the job file.
    pub path: PathBuf,
    /// Unique row id: deduplication keeps one row per id, and the train/holdout split is a
    /// hash of it (so reruns split the same way). Default: `id`.
    #[serde(default = "default_id")]
    pub id: String,
    /// Timestamp column for the time range and for "latest wins" deduplication.
    /// Default: `_timestamp`.
    #[serde(default = "default_time_column")]
    pub time_column: String,
    /// Only rows this recent (e.g. `30d`). Default: all.
    #[serde(default, with = "humantime_serde")]
    pub last: Option<Duration>,
    /// Only rows at or after this RFC 3339 time.
    #[serde(default)]
    pub from: Option<String>,
    /// Only rows before this RFC 3339 time.
    #[serde(default)]
    pub to: Option<String>,
    /// A SQL predicate over the dataset's columns (e.g. `channel <> 'test'`).
    #[serde(default)]
    pub filter: Option<String>,
    /// Feature columns: one vector column (e.g. `embedding`) or a list of numeric columns.
    pub features: FeatureColumns,
    pub label: LabelConfig,
    /// Keep the same number of rows of every class (the smallest class's count).
    /// Default: false.
    #[serde(default)]
    pub balance: bool,
    /// At most this many rows (a deterministic sample by id hash). Default: all.
    #[serde(default)]
    pub sample_rows: Option<usize>,
    /// Share of ids held out for evaluation. Default: 0.2.
    #[serde(default = "default_holdout")]
    pub holdout: f64,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
pub enum FeatureColumns {
    Vector(String),
    Columns(Vec<String>),
}

/// How rows get their label: rules over the row, or a separate labels dataset.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "snake_case")]
pub enum LabelConfig {
    /// The first rule whose SQL condition holds names the label; rows matching none are
    /// dropped. E.g. `{when: "rating >= 4", label: positive}`.
    Rules(Vec<LabelRule>),
    /// A column that already holds the label.
    Column(String),
    /// A Parquet dataset of `id, label` rows (e.g. human labels that arrive later), joined
    /// on the id.
    Join(LabelJoin),
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LabelRule {
    pub when: String,
    pub label: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LabelJoin {
    /// Relative to the job file.
    pub path: PathBuf,
    #[serde(default = "default_id")]
    pub id: String,
    #[serde(default = "default_label")]
    pub label: String,
}

/// The model being trained, as the pipeline knows it.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    /// Registry name (the `model:` of the pipeline's infer stage).
    pub name: String,
    /// The ONNX input name (what the pipeline maps its feature column to).
    #[serde(default = "default_input")]
    pub input: String,
    /// Classes in output order; rows with other labels are dropped.
    pub labels: Vec<String>,
}

/// When a candidate replaces the current version.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GateConfig {
    /// Default: `macro_f1`.
    #[serde(default = "default_metric")]
    pub metric: GateMetric,
    /// The candidate must beat the current version by at least this much on the same
    /// holdout. Default: 0.0 (strictly better is not required; equal publishes).
    #[serde(default)]
    pub min_improvement: f64,
}

impl Default for GateConfig {
    fn default() -> Self {
        GateConfig {
            metric: default_metric(),
            min_improvement: 0.0,
        }
    }
}

fn default_models() -> PathBuf {
    PathBuf::from("../models")
}
fn default_id() -> String {
    "id".into()
}
fn default_label() -> String {
    "label".into()
}
fn default_time_column() -> String {
    "_timestamp".into()
}
fn default_holdout() -> f64 {
    0.2
}
fn default_input() -> String {
    "features".into()
}
fn default_metric() -> GateMetric {
    GateMetric::MacroF1
}

/// Retrain jobs live beside pipelines as `retrain-*.yaml`.
pub fn is_job_file(path: &Path) -> bool {
    path.file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| n.starts_with("retrain-"))
}

/// A loaded job and the directory its relative paths start from.
#[derive(Debug, Clone)]
pub struct LoadedJob {
    pub job: RetrainJob,
    pub base_dir: PathBuf,
}

impl LoadedJob {
    pub fn path(&self, relative: &Path) -> PathBuf {
        self.base_dir.join(relative)
    }
}

/// Reads a job file: `${VAR}` interpolation, typed parse, checks; errors name the file,
/// the key path and the line.
pub fn load(
    file: &Path,
    lookup: &dyn Fn(&str) -> Option<String>,
) -> Result<LoadedJob, ConfigError> {
    let yaml = YamlFile::read(
        file,
        "retrain job",
        &["name", "dataset", "models", "model", "trainer", "gate"],
        lookup,
    )?;
    let job: RetrainJob = typed(&yaml.root, "").map_err(|issue| yaml.error(vec![issue]))?;
    let mut issues = Vec::new();
    let mut issue = |path: &str, message: String| {
        issues.push(ConfigIssue {
            path: path.into(),
            line: None,
            message,
        })
    };
    if job.model.labels.len() < 2 {
        issue("model.labels", "expected at least two classes".into());
    }
    let trainer = &job.trainer;
    let bounded = [
        ("trainer.epochs", limits::count(trainer.epochs, 0, 100_000)),
        (
            "trainer.batch_size",
            limits::count(trainer.batch_size, 1, 1 << 20),
        ),
        ("trainer.hidden", limits::count(trainer.hidden.len(), 0, 16)),
    ];
    for (key, checked) in bounded {
        if let Err(message) = checked {
            issue(key, message);
        }
    }
    for (i, width) in trainer.hidden.iter().enumerate() {
        if let Err(message) = limits::count(*width, 1, 1 << 16) {
            issue(&format!("trainer.hidden[{i}]"), message);
        }
    }
    for (key, value) in [
        ("trainer.learning_rate", trainer.learning_rate),
        ("trainer.l2", trainer.l2),
    ] {
        if !value.is_finite() || value < 0.0 {
            issue(
                key,
                format!("expected a finite number of at least 0, found {value}"),
            );
        }
    }
    if let Some(last) = job.dataset.last {
        if let Err(message) = limits::duration(last, limits::SECOND, 100 * limits::YEAR) {
            issue("dataset.last", message);
        }
    }
    if !(0.0..1.0).contains(&job.dataset.holdout) || job.dataset.holdout == 0.0 {
        issue(
            "dataset.holdout",
            "expected a share between 0 and 1, e.g. 0.2".into(),
        );
    }
    for (key, value) in [
        ("dataset.from", &job.dataset.from),
        ("dataset.to", &job.dataset.to),
    ] {
        if let Some(text) = value {
            if chrono::DateTime::parse_from_rfc3339(text).is_err() {
                issue(
                    key,
                    format!("`{text}` is not an RFC 3339 time (2026-11-22T00:00:00Z)"),
                );
            }
        }
    }
    if let LabelConfig::Rules(rules) = &job.dataset.label {
        for (i, rule) in rules.iter().enumerate() {
            if !job.model.labels.contains(&rule.label) {
                issue(
                    &format!("dataset.label.rules[{i}].label"),
                    format!(
                        "`{}` is not one of model.labels {:?}",
                        rule.label, job.model.labels
                    ),
                );
            }
        }
    }
    if !issues.is_empty() {
        return Err(yaml.error(issues));
    }
    Ok(LoadedJob {
        job,
        base_dir: file.parent().unwrap_or(Path::new(".")).to_owned(),
    })
}

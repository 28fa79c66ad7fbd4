//! The retrain job file (`retrain-*.yaml`): which dataset, which labels, which model,
//! which trainer, and the gate a candidate must pass to be published. Typed with
//! `deny_unknown_fields`, mirroring the YAML; `pipeline::job` loads and checks it.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

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
    /// How to reach an object-store `dataset.path` (as a pipeline's `storage`). Default:
    /// the service's standard environment.
    #[serde(default)]
    pub storage: std::collections::BTreeMap<String, super::StorageConfig>,
}

/// Where the training rows come from and how they are labelled and split.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatasetConfig {
    /// A Hive-partitioned Parquet dataset (a sink's `path`), relative to the job file, or
    /// an object-store URL (`s3://...`; its committed files are read).
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

/// What the evaluation gate compares.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum GateMetric {
    Accuracy,
    MacroF1,
    LogLoss,
}

/// Hyper-parameters (the `trainer` section of a retrain job).
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainConfig {
    /// Hidden layer widths; empty = softmax regression. Default: empty.
    #[serde(default)]
    pub hidden: Vec<usize>,
    /// Passes over the training set. Default: 60.
    #[serde(default = "default_epochs")]
    pub epochs: usize,
    /// Adam step size. Default: 0.01.
    #[serde(default = "default_learning_rate")]
    pub learning_rate: f32,
    /// L2 penalty on weights. Default: 0.0001.
    #[serde(default = "default_l2")]
    pub l2: f32,
    /// Rows per gradient step. Default: 256.
    #[serde(default = "default_batch_size")]
    pub batch_size: usize,
    /// Standardize features (mean 0, std 1). Default: true.
    #[serde(default = "default_true")]
    pub standardize: bool,
    /// Seed for initialisation and shuffling. Default: 7.
    #[serde(default = "default_seed")]
    pub seed: u64,
    /// Fine-tune a whole text encoder with the head instead of training a head on stored
    /// features (`dataset.features` then names the text column). Default: off.
    #[serde(default)]
    pub fine_tune: Option<FineTuneConfig>,
}

/// `trainer.fine_tune`: start from a served BERT encoder and train all of its weights with
/// a softmax head on the labelled texts; the result is one ONNX model from token ids to
/// probabilities, published with the encoder's tokenizer.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct FineTuneConfig {
    /// Registry model to start from (its current version): a BERT encoder ONNX as
    /// `scripts/models/build_encoder.py` writes it, with its `tokenizer.json`, or a model
    /// an earlier fine-tuning published.
    pub encoder: String,
    /// Tokens per text; longer texts are cut. Default: 128.
    #[serde(default = "default_max_len")]
    pub max_len: usize,
    /// AdamW step size of the encoder's weights (the head's is `trainer.learning_rate`,
    /// its weight decay `trainer.l2`). Default: 3e-5.
    #[serde(default = "default_encoder_learning_rate")]
    pub encoder_learning_rate: f64,
    /// Share of the steps over which the step sizes warm up from 0; they then decay
    /// linearly to 0. Default: 0.1.
    #[serde(default = "default_warmup")]
    pub warmup: f64,
}

impl Default for TrainConfig {
    fn default() -> Self {
        TrainConfig {
            hidden: Vec::new(),
            epochs: default_epochs(),
            learning_rate: default_learning_rate(),
            l2: default_l2(),
            batch_size: default_batch_size(),
            standardize: true,
            seed: default_seed(),
            fine_tune: None,
        }
    }
}

fn default_epochs() -> usize {
    60
}
fn default_learning_rate() -> f32 {
    0.01
}
fn default_l2() -> f32 {
    1e-4
}
fn default_batch_size() -> usize {
    256
}
fn default_true() -> bool {
    true
}
fn default_seed() -> u64 {
    7
}
fn default_max_len() -> usize {
    128
}
fn default_encoder_learning_rate() -> f64 {
    3e-5
}
fn default_warmup() -> f64 {
    0.1
}

//! The `stages` section and the model settings: typed structs for `window`, `tokenize`,
//! `infer` and `enrich`, in the order rows usually pass through them.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

/// One entry of `stages`. Stages run in file order between decode and the sinks.
// Parsed once per file, never moved on a hot path: the infer variant's size costs nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "snake_case")]
pub enum StageConfig {
    Window(WindowConfig),
    Tokenize(TokenizeConfig),
    Infer(InferConfig),
    Enrich(EnrichConfig),
    Sql(SqlConfig),
}

impl StageConfig {
    pub(crate) fn kind(&self) -> &'static str {
        match self {
            StageConfig::Window(_) => "window",
            StageConfig::Tokenize(_) => "tokenize",
            StageConfig::Infer(_) => "infer",
            StageConfig::Enrich(_) => "enrich",
            StageConfig::Sql(_) => "sql",
        }
    }
}

/// `sql`: a SQL statement over each micro-batch, registered as the table `batch` (polars
/// SQL), e.g. `SELECT *, lower(text) AS text_lc FROM batch WHERE rating IS NOT NULL`.
/// Row-wise only (filters, projections, casts, functions); it must keep the provenance
/// columns (`_topic`, `_partition`, `_offset`, `_timestamp`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SqlConfig {
    pub query: String,
}

/// `window`: per-key event-time windows over the rows, one output row per closed window
/// with features of the values inside it (see `stage::window`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WindowConfig {
    /// Utf8 columns that identify the series (e.g. `[machine_id]`); windows are per key.
    pub key: Vec<String>,
    /// Event-time column (`timestamp_ms`).
    pub time: String,
    /// Window length.
    #[serde(with = "humantime_serde")]
    pub size: Duration,
    /// Distance between window starts. Default: `size` (tumbling windows); smaller gives
    /// sliding windows, each record then counts in `size / slide` windows.
    #[serde(default, with = "humantime_serde")]
    pub slide: Option<Duration>,
    /// How long after a window's end records may still arrive for it (measured on the
    /// key's event time). Later records go to the dead letters as late. Default: `0s`.
    #[serde(default, with = "humantime_serde")]
    pub allowed_lateness: Duration,
    /// Rows where any of these columns is null are not windowed (they belong to another
    /// feed on the same topic). Default: none.
    #[serde(default)]
    pub only_with: Vec<String>,
    /// Utf8 columns copied from the window's latest record (e.g. a known condition).
    #[serde(default)]
    pub carry: Vec<String>,
    /// The columns to summarize and how.
    pub fields: Vec<WindowField>,
}

impl WindowConfig {
    pub(crate) fn slide(&self) -> Duration {
        self.slide.unwrap_or(self.size)
    }
}

/// One summarized column: a number per record, or a chunk of samples per record
/// (`list<float64>` with `sample_rate`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WindowField {
    pub input: String,
    /// Features, each written to `INPUT_FEATURE` (Float64).
    pub features: Vec<WindowFeature>,
    /// For a list column: the Float64 column giving each chunk's samples per second
    /// (sample `i` of a chunk is at `time + i / rate`). Required for list columns.
    #[serde(default)]
    pub sample_rate: Option<String>,
    /// Spectral band power of the window's samples (list columns), each written to
    /// `INPUT_band_NAME`: the signal's mean square in `[low_hz, high_hz)`, from an FFT of
    /// the window's samples in time order.
    #[serde(default)]
    pub bands: Vec<BandConfig>,
}

/// Window features (population statistics over the window's values).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WindowFeature {
    Mean,
    Std,
    Rms,
    Min,
    Max,
    /// Largest absolute value.
    Peak,
    /// Peak / RMS.
    Crest,
    /// Pearson kurtosis m4 / m2² (3 for a normal distribution).
    Kurtosis,
    /// m3 / m2^1.5.
    Skew,
    /// Least-squares slope of value over time, per second.
    Slope,
    /// Values in the window.
    Count,
}

impl WindowFeature {
    pub(crate) fn name(self) -> &'static str {
        match self {
            WindowFeature::Mean => "mean",
            WindowFeature::Std => "std",
            WindowFeature::Rms => "rms",
            WindowFeature::Min => "min",
            WindowFeature::Max => "max",
            WindowFeature::Peak => "peak",
            WindowFeature::Crest => "crest",
            WindowFeature::Kurtosis => "kurtosis",
            WindowFeature::Skew => "skew",
            WindowFeature::Slope => "slope",
            WindowFeature::Count => "count",
        }
    }
}

/// A frequency band whose energy becomes a feature.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BandConfig {
    pub name: String,
    pub low_hz: f64,
    pub high_hz: f64,
}

/// `tokenize`: a text column -> `input_ids`, `attention_mask`, `token_type_ids` (lists of
/// int64, padded to the longest row of each batch).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenizeConfig {
    /// The text column (Utf8).
    pub input: String,
    /// A `tokenizer.json` file, or a model name in the registry whose current version
    /// holds one (e.g. `minilm-l6`). Files are relative to the pipeline file.
    pub tokenizer: String,
    /// Longer texts are truncated to this many tokens (special tokens included).
    /// Default: 128.
    #[serde(default = "default_max_len")]
    pub max_len: usize,
    /// Prefix of the three output columns. Default: none (`input_ids`, ...).
    #[serde(default)]
    pub output_prefix: String,
}

/// `infer`: run an ONNX model from the registry over columns of the rows.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InferConfig {
    /// Model name in the registry (`models/NAME/VERSION/model.onnx`); the version named
    /// by `models/NAME/current` serves, and a change of that pointer is hot-swapped in.
    pub model: String,
    /// Model input name -> column. A list of columns is stacked into one
    /// `[batch, n]` float tensor (numeric feature columns).
    pub inputs: std::collections::BTreeMap<String, InputColumns>,
    /// Model output name -> new column. Vector outputs become fixed-size lists.
    pub outputs: std::collections::BTreeMap<String, String>,
    /// Column that receives `NAME/VERSION` of the model that produced each row.
    /// Default: `model_version`.
    #[serde(default = "default_version_column")]
    pub version_column: String,
    /// A variant of `model` with the same inputs and outputs (e.g. its int8 quantization)
    /// served instead when the stage runs on the CPU. Default: none.
    #[serde(default)]
    pub cpu_model: Option<String>,
    /// `auto` (default: CUDA when the library and a GPU are there, else CPU), `cpu`, `cuda`.
    #[serde(default)]
    pub device: Device,
    /// CUDA device ordinal. Default: 0.
    #[serde(default)]
    pub device_id: i32,
    /// ONNX Runtime intra-op threads per session. Default: 0 (ONNX Runtime decides).
    #[serde(default)]
    pub intra_threads: usize,
    /// Whether ONNX Runtime's intra-op threads spin waiting for the next run instead of
    /// sleeping. Default: false: spinning threads take the cores the host side (decode,
    /// tokenize, Parquet) needs, and between runs of a GPU model they spin for nothing
    /// (benches/RESULTS.md, "The host side").
    #[serde(default)]
    pub intra_spinning: bool,
    /// Sessions (one worker thread each) serving this stage. Default: 1.
    #[serde(default = "default_workers")]
    pub workers: usize,
    /// Rows per model run. Default: 64.
    #[serde(default = "default_max_batch")]
    pub max_batch: usize,
    /// How long a worker waits for more rows before running a partial batch.
    /// Default: `5ms`.
    #[serde(default = "default_max_wait", with = "humantime_serde")]
    pub max_wait: Duration,
    /// A `[batch, seq]` input whose non-zero count per row is the row's real length (e.g.
    /// `attention_mask`): rows are then sorted by length inside a run and each chunk is
    /// trimmed to its own longest row, when that saves padding. Default: none.
    #[serde(default)]
    pub sort_by_length_of: Option<String>,
    /// Drop the input columns from the rows after this stage. Default: false.
    #[serde(default)]
    pub drop_inputs: bool,
    /// How often the registry's `current` pointer is checked. Default: `2s`.
    #[serde(default = "default_watch_interval", with = "humantime_serde")]
    pub watch_interval: Duration,
    /// Drift of the serving version against its reference profile (when its manifest has
    /// one).
    #[serde(default)]
    pub drift: DriftConfig,
    /// Serve a share of the rows with another published version.
    #[serde(default)]
    pub canary: Option<CanaryConfig>,
    /// Also run a sample of the rows through another published version, into `shadow_*`
    /// columns, without changing the served ones.
    #[serde(default)]
    pub shadow: Option<ShadowConfig>,
    /// Live accuracy: delayed labels from a topic joined to the predictions by id.
    #[serde(default)]
    pub accuracy: Option<AccuracyConfig>,
}

/// `infer.accuracy`: each prediction (served, canary or shadow) waits up to `horizon` for
/// its label on `labels.topic`; the joined pairs give accuracy, macro-F1 and calibration
/// error per model version over tumbling windows of `window` pairs.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AccuracyConfig {
    /// The column of the stage's rows whose value (as text) a label's id matches.
    pub id: String,
    /// Where the labels come from.
    pub labels: LabelsTopicConfig,
    /// How long a prediction waits for its label, and a label for its prediction.
    /// Default: `1h`.
    #[serde(default = "default_horizon", with = "humantime_serde")]
    pub horizon: Duration,
    /// Labelled predictions per window. Default: `500`.
    #[serde(default = "default_accuracy_window")]
    pub window: usize,
    /// At most this many predictions (and as many labels) wait at once; beyond it the
    /// oldest is given up (counted). Default: `1000000`.
    #[serde(default = "default_max_pending")]
    pub max_pending: usize,
    /// A topic that receives each window's scores as a JSON row. Default: none.
    #[serde(default)]
    pub topic: Option<String>,
}

/// `infer.accuracy.labels`: a topic of JSON objects, each naming a row and its label.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LabelsTopicConfig {
    /// The topic (every partition is read by every replica: a label finds the replica
    /// that holds its prediction).
    pub topic: String,
    /// The field holding the row's id. Default: `id`.
    #[serde(default = "default_id_field")]
    pub id: String,
    /// The field holding the label. Default: `label`.
    #[serde(default = "default_label_field")]
    pub label: String,
    /// The label's value (as text: `5`, `true`, `neg`) -> one of the model's classes.
    /// Values it does not list are skipped (counted). Default: none (the value must be a
    /// class name).
    #[serde(default)]
    pub values: std::collections::BTreeMap<String, String>,
}

fn default_horizon() -> Duration {
    Duration::from_secs(3600)
}

fn default_accuracy_window() -> usize {
    500
}

fn default_max_pending() -> usize {
    1_000_000
}

fn default_id_field() -> String {
    "id".to_owned()
}

fn default_label_field() -> String {
    "label".to_owned()
}

/// `infer.shadow`: rows whose `key` hashes into `sample` also go through `version`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShadowConfig {
    /// A published version of the stage's model.
    pub version: String,
    /// Share of the keys, above 0 and at most 1.
    pub sample: f64,
    /// The column whose value (as text) decides whether a row is in the sample.
    pub key: String,
}

/// `infer.canary`: rows whose `key` hashes into `share` go to `version`, the rest to the
/// serving version. The same key always takes the same lane.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CanaryConfig {
    /// A published version of the stage's model.
    pub version: String,
    /// Between 0 and 1.
    pub share: f64,
    /// The column whose value (as text) decides a row's lane.
    pub key: String,
}

/// `infer.drift`: how the serving version's drift is measured and reported.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DriftConfig {
    /// Rows per window. `0` turns drift off. Default: `1000`.
    #[serde(default = "default_drift_window")]
    pub window: usize,
    /// A signal whose PSI rises above this raises a drift event. Default: `0.25`.
    #[serde(default = "default_raise_above")]
    pub raise_above: f64,
    /// ... and a raised signal clears below this. Default: `0.1`.
    #[serde(default = "default_clear_below")]
    pub clear_below: f64,
    /// A topic that receives each event as a JSON row. Default: none (logs and metrics).
    #[serde(default)]
    pub topic: Option<String>,
}

impl Default for DriftConfig {
    fn default() -> Self {
        DriftConfig {
            window: default_drift_window(),
            raise_above: default_raise_above(),
            clear_below: default_clear_below(),
            topic: None,
        }
    }
}

fn default_drift_window() -> usize {
    1000
}

fn default_raise_above() -> f64 {
    0.25
}

fn default_clear_below() -> f64 {
    0.1
}

/// One model input's columns: one column, or several stacked into `[batch, n]`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
pub enum InputColumns {
    One(String),
    Stacked(Vec<String>),
}

impl InputColumns {
    pub(crate) fn names(&self) -> Vec<&str> {
        match self {
            InputColumns::One(name) => vec![name.as_str()],
            InputColumns::Stacked(names) => names.iter().map(String::as_str).collect(),
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Device {
    #[default]
    Auto,
    Cpu,
    Cuda,
}

/// `enrich`: derived columns from model outputs, and a lookup join.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnrichConfig {
    /// Derived columns, computed in order (a later one may use an earlier one's output).
    #[serde(default)]
    pub derive: Vec<DeriveConfig>,
    /// Reference tables joined on a key column.
    #[serde(default)]
    pub lookup: Vec<LookupConfig>,
}

/// One derived column.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "snake_case")]
pub enum DeriveConfig {
    /// Index of the largest element of a vector column, as a label.
    Argmax {
        input: String,
        output: String,
        /// Label names by index, or `model` to read them from the manifest of the model
        /// version named in `version_column` (so a swapped model's labels are used).
        labels: LabelSource,
        #[serde(default = "default_version_column")]
        version_column: String,
    },
    /// Largest element of a vector column (e.g. the winning class probability).
    Max { input: String, output: String },
    /// One element of a vector column.
    Element {
        input: String,
        index: usize,
        output: String,
    },
    /// Softmax of a vector column (logits -> probabilities).
    Softmax { input: String, output: String },
    /// Sum of some elements of a vector column (e.g. the probabilities of every fault
    /// class).
    Sum {
        input: String,
        indices: Vec<usize>,
        output: String,
    },
    /// `input > above` as a boolean column.
    Threshold {
        input: String,
        output: String,
        above: f64,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
pub enum LabelSource {
    Listed(Vec<String>),
    /// Must be the word `model`.
    FromModel(String),
}

/// A reference table (Parquet or CSV with a header) joined on a key.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LookupConfig {
    /// The table file, relative to the pipeline file. `.parquet` or `.csv`.
    pub path: PathBuf,
    /// Row column whose value is looked up.
    pub on: String,
    /// Table column holding the key. Default: the same name as `on`.
    #[serde(default)]
    pub key: Option<String>,
    /// Table columns added to the rows (null where the key is not found).
    pub columns: Vec<String>,
    /// Re-read the file this often; the new table replaces the old one atomically.
    /// Default: `5m`.
    #[serde(default = "default_refresh", with = "humantime_serde")]
    pub refresh: Duration,
}

impl LookupConfig {
    pub(crate) fn key_column(&self) -> &str {
        self.key.as_deref().unwrap_or(&self.on)
    }
}

/// `onnxruntime`: where the ONNX Runtime shared library is.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OnnxRuntimeConfig {
    /// Path of `libonnxruntime.so.X.Y.Z`, relative to the pipeline file. Default:
    /// `ORT_DYLIB_PATH`, then the project's `.tools/onnxruntime[-gpu]/lib/`.
    #[serde(default)]
    pub library: Option<PathBuf>,
}

fn default_max_len() -> usize {
    128
}
pub(super) fn default_version_column() -> String {
    "model_version".into()
}
fn default_workers() -> usize {
    1
}
fn default_max_batch() -> usize {
    64
}
fn default_max_wait() -> Duration {
    Duration::from_millis(5)
}
fn default_watch_interval() -> Duration {
    Duration::from_secs(2)
}
fn default_refresh() -> Duration {
    Duration::from_secs(300)
}

//! The pipeline file: typed serde structs that mirror the YAML 1:1, and the loader.
//!
//! Loading is four steps, each reporting every problem it finds rather than the first:
//! read the file, interpolate `${VAR}` / `${VAR:-default}` ([`interpolate`]), deserialize
//! into these structs (`deny_unknown_fields` everywhere; when the whole file fails, each
//! section is tried on its own so independent mistakes are all reported), then semantic
//! checks against the record schema ([`validate`]). Every error carries the file, the key
//! path and the line ([`locate`]).
//!
//! Relative paths: what defines the pipeline (`decode.schema`, `models`, tokenizer and
//! lookup files, `onnxruntime.library`) is relative to the pipeline file; output paths are
//! relative to the working directory.

mod error;
mod interpolate;
mod locate;
mod stages;
mod validate;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bytesize::ByteSize;
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_norway::Value;

pub use error::{ConfigError, ConfigIssue};
pub use interpolate::{interpolate, MissingVar};
pub use locate::LineIndex;
pub use stages::{
    BandConfig, DeriveConfig, Device, EnrichConfig, InferConfig, InputColumns, LabelSource,
    LookupConfig, OnnxRuntimeConfig, SqlConfig, StageConfig, TokenizeConfig, WindowConfig,
    WindowFeature, WindowField,
};
pub use validate::Pipeline;

/// A whole pipeline file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PipelineConfig {
    /// Pipeline name, used in logs and as the default consumer group.
    pub name: String,
    pub source: SourceConfig,
    pub decode: DecodeConfig,
    /// What happens to decoded rows before the sinks, in order. Default: nothing.
    #[serde(default)]
    pub stages: Vec<StageConfig>,
    /// The model registry directory, relative to the pipeline file. Default: `../models`
    /// (the project's `models/` for files in `pipelines/`).
    #[serde(default = "default_models")]
    pub models: PathBuf,
    /// Where the ONNX Runtime library is (see `src/model/onnxruntime.rs`).
    #[serde(default)]
    pub onnxruntime: OnnxRuntimeConfig,
    /// A retrain job that `sluice run` executes on a schedule, beside the stream.
    #[serde(default)]
    pub retrain: Option<PipelineRetrainConfig>,
    /// Where rows go after the stages. At least one.
    pub sinks: Vec<SinkConfig>,
    /// Where records that cannot be processed go, with the reason.
    pub dead_letter: DeadLetterConfig,
    /// The `/metrics` and `/health` endpoint. Default: off (`sluice run --metrics-listen`
    /// turns it on too).
    #[serde(default)]
    pub metrics: Option<MetricsConfig>,
}

/// `metrics`: where `sluice run` serves `/metrics` (Prometheus) and `/health`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsConfig {
    /// `HOST:PORT`, e.g. `0.0.0.0:9464` (port 0: any free port).
    pub listen: String,
}

/// `retrain`: run a retrain job (`sluice retrain`) from inside `sluice run`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PipelineRetrainConfig {
    /// The job file, relative to the pipeline file (e.g. `retrain-sentiment.yaml`).
    pub job: PathBuf,
    /// Run every DURATION (e.g. `24h`). One of `every` and `cron`.
    #[serde(default, with = "humantime_serde")]
    pub every: Option<Duration>,
    /// Run at the times of a cron expression (UTC, e.g. `0 3 * * *`).
    #[serde(default)]
    pub cron: Option<String>,
}

/// Where records come from.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "snake_case")]
pub enum SourceConfig {
    Kafka(KafkaSourceConfig),
}

/// `source.kafka`: a consumer group subscribed to one or more topics.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaSourceConfig {
    /// `bootstrap.servers`, e.g. `${KAFKA_BROKERS:-localhost:9092}`.
    pub brokers: String,
    pub topics: Vec<String>,
    /// Consumer group id. Default: `sluice-<pipeline name>`.
    #[serde(default)]
    pub group_id: Option<String>,
    /// Where a group with no committed offset starts. Default: `earliest`.
    #[serde(default)]
    pub start: StartFrom,
    #[serde(default)]
    pub batch: BatchConfig,
    /// Any librdkafka consumer property, passed through (they win over sluice's defaults,
    /// except `enable.auto.offset.store`, which must stay `false`).
    #[serde(default)]
    pub properties: BTreeMap<String, PropertyValue>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StartFrom {
    #[default]
    Earliest,
    Latest,
}

/// `source.kafka.batch`: how micro-batches are cut, per partition.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BatchConfig {
    /// Cut a batch at this many records. Default: 10000.
    #[serde(default = "default_batch_rows")]
    pub max_rows: usize,
    /// Cut a batch this long after its first record arrived. Default: `250ms`.
    #[serde(default = "default_batch_wait", with = "humantime_serde")]
    pub max_wait: Duration,
}

impl Default for BatchConfig {
    fn default() -> Self {
        BatchConfig {
            max_rows: default_batch_rows(),
            max_wait: default_batch_wait(),
        }
    }
}

/// A librdkafka property value: YAML scalars of any type are passed on as text.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum PropertyValue {
    Text(String),
    Integer(i64),
    Float(f64),
    Bool(bool),
}

impl std::fmt::Display for PropertyValue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PropertyValue::Text(v) => f.write_str(v),
            PropertyValue::Integer(v) => write!(f, "{v}"),
            PropertyValue::Float(v) => write!(f, "{v}"),
            PropertyValue::Bool(v) => write!(f, "{v}"),
        }
    }
}

/// `decode`: how record bytes become Arrow rows.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DecodeConfig {
    /// Record format. Default: `json` (one JSON object per Kafka message).
    #[serde(default)]
    pub format: RecordFormat,
    /// Schema file (see `schemas/README.md`), relative to the pipeline file.
    pub schema: PathBuf,
    /// Larger records go to the dead letters. Default: `1 MiB`.
    #[serde(default = "default_max_record_bytes")]
    pub max_record_bytes: ByteSize,
    /// Fields not in the schema: `ignore` (default) or `reject` (dead letter).
    #[serde(default)]
    pub unknown_fields: UnknownFields,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RecordFormat {
    #[default]
    Json,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UnknownFields {
    #[default]
    Ignore,
    Reject,
}

/// One entry of `sinks`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "snake_case")]
pub enum SinkConfig {
    Parquet(ParquetSinkConfig),
    Kafka(KafkaSinkConfig),
}

/// A Hive-partitioned Parquet dataset in a local directory.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ParquetSinkConfig {
    /// Dataset root directory (created if missing).
    pub path: PathBuf,
    /// Hive partition keys, outermost first: `date(COL)`, `hour(COL)` (UTC, of a timestamp
    /// column) or a plain column name; `name=expr` renames the key. Default: none.
    #[serde(default)]
    pub partition_by: Vec<String>,
    /// `zstd` (default) or `none`.
    #[serde(default)]
    pub compression: Compression,
    #[serde(default)]
    pub roll: RollConfig,
    /// Most files open at once; past it the oldest open file group is closed early.
    /// Default: 64.
    #[serde(default = "default_max_open_files")]
    pub max_open_files: usize,
    /// Rows per Parquet row group. Default: 65536.
    #[serde(default = "default_row_group_rows")]
    pub row_group_rows: usize,
    /// Columns written. Default: all. The provenance columns (`_topic`, `_partition`,
    /// `_offset`, `_timestamp`) are always written.
    #[serde(default)]
    pub columns: Option<Vec<String>>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Compression {
    #[default]
    Zstd,
    None,
}

/// When open Parquet files are closed and made visible. A closed file is what makes its
/// records durable, so these also bound how far offset commits lag behind.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RollConfig {
    /// Default: 1000000 rows per source partition.
    #[serde(default = "default_roll_rows")]
    pub max_rows: u64,
    /// Default: `128 MiB` (encoded size, estimated while writing).
    #[serde(default = "default_roll_bytes")]
    pub max_bytes: ByteSize,
    /// Default: `1m` after the first row of the file.
    #[serde(default = "default_roll_age", with = "humantime_serde")]
    pub max_age: Duration,
    /// Files are aligned to segments of this many source offsets (`k·N ..= (k+1)·N − 1`):
    /// a segment's files are merged into one per directory when the partition moves past
    /// it, so file names depend on offsets only and a backfill rewrites the same names.
    /// Default: `max_rows`.
    #[serde(default)]
    pub segment_offsets: Option<u64>,
}

impl RollConfig {
    /// Offsets per segment.
    pub fn segment_offsets(&self) -> u64 {
        self.segment_offsets.unwrap_or(self.max_rows)
    }
}

impl Default for RollConfig {
    fn default() -> Self {
        RollConfig {
            max_rows: default_roll_rows(),
            max_bytes: default_roll_bytes(),
            max_age: default_roll_age(),
            segment_offsets: None,
        }
    }
}

/// An output Kafka topic: one JSON message per row.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaSinkConfig {
    pub topic: String,
    /// Default: the source's brokers.
    #[serde(default)]
    pub brokers: Option<String>,
    /// Columns written into each JSON message. Default: all.
    #[serde(default)]
    pub columns: Option<Vec<String>>,
    /// Column whose value (as text) is the message key. Default: no key.
    #[serde(default)]
    pub key: Option<String>,
    /// librdkafka producer properties. sluice sets `acks=all` and
    /// `enable.idempotence=true` unless overridden here.
    #[serde(default)]
    pub properties: BTreeMap<String, PropertyValue>,
    /// Send only rows that raise an alert (with hysteresis per key). Default: every row.
    #[serde(default)]
    pub alert: Option<AlertConfig>,
}

/// `alert` of a `kafka` sink: a row is sent when its `score` rises above `raise_above`
/// while its `key` is not alerting; the key's alert clears when its score falls below
/// `clear_below`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AlertConfig {
    pub key: String,
    pub score: String,
    pub raise_above: f64,
    pub clear_below: f64,
}

/// `dead_letter`: at least one of `parquet` and `kafka`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeadLetterConfig {
    /// A Parquet dataset of dead letters (schema in `schemas/dead_letter.json`).
    #[serde(default)]
    pub parquet: Option<ParquetSinkConfig>,
    /// A topic that receives the original bytes, with the reason in headers.
    #[serde(default)]
    pub kafka: Option<DeadLetterKafkaConfig>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeadLetterKafkaConfig {
    pub topic: String,
    /// Default: the source's brokers.
    #[serde(default)]
    pub brokers: Option<String>,
    #[serde(default)]
    pub properties: BTreeMap<String, PropertyValue>,
}

fn default_models() -> PathBuf {
    PathBuf::from("../models")
}
fn default_batch_rows() -> usize {
    10_000
}
fn default_batch_wait() -> Duration {
    Duration::from_millis(250)
}
fn default_max_record_bytes() -> ByteSize {
    ByteSize::mib(1)
}
fn default_max_open_files() -> usize {
    64
}
fn default_row_group_rows() -> usize {
    65_536
}
fn default_roll_rows() -> u64 {
    1_000_000
}
fn default_roll_bytes() -> ByteSize {
    ByteSize::mib(128)
}
fn default_roll_age() -> Duration {
    Duration::from_secs(60)
}

/// The top level with every section left as YAML, used to report unknown and missing
/// top-level keys when the full typed parse fails.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
struct TopLevelShape {
    name: Value,
    source: Value,
    decode: Value,
    #[serde(default)]
    stages: Option<Vec<Value>>,
    #[serde(default)]
    models: Option<Value>,
    #[serde(default)]
    onnxruntime: Option<Value>,
    #[serde(default)]
    retrain: Option<Value>,
    sinks: Vec<Value>,
    dead_letter: Value,
}

/// Reads a YAML file (`what`: "pipeline", "job") and resolves its `${VAR}`s with `lookup`;
/// a missing variable is an error at its line.
pub fn read_interpolated(
    file: &Path,
    what: &str,
    lookup: &dyn Fn(&str) -> Option<String>,
) -> Result<String, ConfigError> {
    let raw = std::fs::read_to_string(file)
        .map_err(|e| ConfigError::single(file, ".", format!("cannot read the {what} file: {e}")))?;
    interpolate(&raw, lookup).map_err(|missing| ConfigError {
        file: file.to_owned(),
        issues: missing
            .into_iter()
            .map(|m| ConfigIssue {
                path: ".".into(),
                line: Some(m.line),
                message: format!(
                    "environment variable `{}` is not set and has no default \
                     (write `${{{}:-default}}` to give one)",
                    m.name, m.name
                ),
            })
            .collect(),
    })
}

/// Loads and validates a pipeline file, reading `${VAR}`s from the process environment.
pub fn load(file: &Path) -> Result<Pipeline, ConfigError> {
    load_with_vars(file, &|name| std::env::var(name).ok())
}

/// Loads and validates a pipeline file with `${VAR}`s resolved by `lookup` (the demo and
/// tests point brokers at an in-process cluster this way).
pub fn load_with_vars(
    file: &Path,
    lookup: &dyn Fn(&str) -> Option<String>,
) -> Result<Pipeline, ConfigError> {
    let text = read_interpolated(file, "pipeline", lookup)?;
    let lines = LineIndex::new(&text);
    let root: Value = serde_norway::from_str(&text).map_err(|e| ConfigError {
        file: file.to_owned(),
        issues: vec![ConfigIssue {
            path: ".".into(),
            line: e.location().map(|l| l.line()),
            message: format!("not valid YAML: {e}"),
        }],
    })?;
    let config = parse_sections(&root).map_err(|issues| ConfigError {
        file: file.to_owned(),
        issues: with_lines(issues, &lines),
    })?;
    let base_dir = file.parent().unwrap_or(Path::new("."));
    let mut pipeline = validate::validate(config, base_dir).map_err(|issues| ConfigError {
        file: file.to_owned(),
        issues: with_lines(issues, &lines),
    })?;
    pipeline.retrain = scheduled_retrain(&pipeline, file, &lines, lookup)?;
    Ok(pipeline)
}

/// The pipeline's `retrain` job, loaded with the same variables, and its schedule.
fn scheduled_retrain(
    pipeline: &Pipeline,
    file: &Path,
    lines: &LineIndex,
    lookup: &dyn Fn(&str) -> Option<String>,
) -> Result<Option<ScheduledRetrain>, ConfigError> {
    let Some(retrain) = &pipeline.config.retrain else {
        return Ok(None);
    };
    let issue = |path: &str, message: String| ConfigError {
        file: file.to_owned(),
        issues: vec![ConfigIssue {
            path: path.into(),
            line: lines.line_of(path),
            message,
        }],
    };
    let schedule = match (&retrain.every, &retrain.cron) {
        (Some(every), None) => crate::retrain::schedule::Schedule::Every(*every),
        (None, Some(cron)) => {
            crate::retrain::schedule::Schedule::cron(cron).map_err(|e| issue("retrain.cron", e))?
        }
        _ => {
            return Err(issue(
                "retrain",
                "expected exactly one of `every` and `cron`".into(),
            ))
        }
    };
    let job_file = pipeline.plan_context.base_dir.join(&retrain.job);
    let job = crate::retrain::job::load(&job_file, lookup)
        .map_err(|e| issue("retrain.job", e.to_string()))?;
    Ok(Some(ScheduledRetrain { job, schedule }))
}

/// A retrain job that `sluice run` executes on its schedule.
#[derive(Debug, Clone)]
pub struct ScheduledRetrain {
    pub job: crate::retrain::job::LoadedJob,
    pub schedule: crate::retrain::schedule::Schedule,
}

fn with_lines(mut issues: Vec<ConfigIssue>, lines: &LineIndex) -> Vec<ConfigIssue> {
    for issue in &mut issues {
        if issue.line.is_none() {
            issue.line = lines.line_of(&issue.path);
        }
    }
    issues
}

/// Deserializes the whole file; when that fails, deserializes each section on its own so
/// that every independent mistake is reported.
fn parse_sections(root: &Value) -> Result<PipelineConfig, Vec<ConfigIssue>> {
    let first = match typed::<PipelineConfig>(root, "") {
        Ok(config) => return Ok(config),
        Err(issue) => issue,
    };
    let mut issues = Vec::new();
    if let Err(issue) = typed::<TopLevelShape>(root, "") {
        issues.push(issue);
    }
    let section = |key: &str| root.get(key).filter(|v| !v.is_null());
    if let Some(name) = section("name") {
        issues.extend(typed::<String>(name, "name").err());
    }
    if let Some(source) = section("source") {
        issues.extend(typed::<SourceConfig>(source, "source").err());
    }
    if let Some(decode) = section("decode") {
        issues.extend(typed::<DecodeConfig>(decode, "decode").err());
    }
    if let Some(Value::Sequence(stages)) = section("stages") {
        for (i, stage) in stages.iter().enumerate() {
            issues.extend(typed::<StageConfig>(stage, &format!("stages[{i}]")).err());
        }
    }
    if let Some(onnxruntime) = section("onnxruntime") {
        issues.extend(typed::<OnnxRuntimeConfig>(onnxruntime, "onnxruntime").err());
    }
    if let Some(retrain) = section("retrain") {
        issues.extend(typed::<PipelineRetrainConfig>(retrain, "retrain").err());
    }
    if let Some(Value::Sequence(sinks)) = section("sinks") {
        for (i, sink) in sinks.iter().enumerate() {
            issues.extend(typed::<SinkConfig>(sink, &format!("sinks[{i}]")).err());
        }
    }
    if let Some(dead_letter) = section("dead_letter") {
        issues.extend(typed::<DeadLetterConfig>(dead_letter, "dead_letter").err());
    }
    issues.dedup();
    if issues.is_empty() {
        issues.push(first);
    }
    Err(issues)
}

/// Deserializes one YAML value, turning a failure into an issue with the full key path.
///
/// Enums are written in map form (`kafka: {...}`), which serde_norway reads through
/// `singleton_map_recursive`; the value goes through its YAML text for that.
fn typed<T: DeserializeOwned>(value: &Value, prefix: &str) -> Result<T, ConfigIssue> {
    let issue = |path: String, message: String| ConfigIssue {
        path,
        line: None,
        message,
    };
    let text =
        serde_norway::to_string(value).map_err(|e| issue(prefix.to_owned(), e.to_string()))?;
    let mut track = serde_path_to_error::Track::new();
    let deserializer = serde_path_to_error::Deserializer::new(
        serde_norway::Deserializer::from_str(&text),
        &mut track,
    );
    let parsed: Result<T, _> =
        serde_norway::with::singleton_map_recursive::deserialize(deserializer);
    parsed.map_err(|error| {
        let err = serde_path_to_error::Error::new(track.path(), error);
        let inner = err.path().to_string();
        let path = match (prefix.is_empty(), inner.as_str()) {
            (true, ".") => String::new(),
            (true, _) => inner,
            (false, ".") => prefix.to_owned(),
            (false, _) if inner.starts_with('[') => format!("{prefix}{inner}"),
            (false, _) => format!("{prefix}.{inner}"),
        };
        // Positions refer to the re-serialized section; the line index gives the real one.
        let message = err.into_inner().to_string();
        let message = match message.rfind(" at line ") {
            Some(cut) => &message[..cut],
            None => &message,
        };
        // serde_norway starts messages with its own (section-relative) path: drop it.
        let message = match message.split_once(": ") {
            Some((own_path, rest)) if !own_path.contains(' ') && path.contains(own_path) => rest,
            _ => message,
        };
        issue(path, message.to_owned())
    })
}

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
mod file;
mod interpolate;
pub mod limits;
mod locate;
pub mod redact;
mod stages;
mod validate;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bytesize::ByteSize;
use serde::Deserialize;
use serde_norway::Value;

pub use error::{ConfigError, ConfigIssue};
pub use file::{typed, YamlFile};
pub use interpolate::{interpolate, InterpolationIssue, Substitution};
pub use locate::LineIndex;
pub use redact::Redactions;
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
    /// Settings every Kafka client of the pipeline shares (source, Kafka sinks, dead-letter
    /// topic): where TLS and SASL settings go once. Default: none.
    #[serde(default)]
    pub kafka: Option<KafkaClientsConfig>,
}

/// `kafka`: what every Kafka client of the pipeline shares.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaClientsConfig {
    /// librdkafka properties for every client (e.g. `security.protocol`,
    /// `ssl.ca.location`, `sasl.mechanism`, `sasl.username`, `sasl.password`); a client's
    /// own `properties` win over these.
    #[serde(default)]
    pub properties: BTreeMap<String, PropertyValue>,
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
    /// When a partition's committed offset was deleted by retention before it was read:
    /// `skip` (default: go on from the log start, counting the lost records in
    /// `sluice_records_skipped_total` and logging them at ERROR) or `fail` (stop without
    /// committing, for an operator to decide).
    #[serde(default)]
    pub on_offset_reset: OnOffsetReset,
    #[serde(default)]
    pub batch: BatchConfig,
    /// How long start-up waits for a broker to answer before it fails (naming the
    /// brokers). Default: `10s`.
    #[serde(default = "default_connect_timeout", with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// Any librdkafka consumer property, passed through (they win over sluice's defaults,
    /// except `enable.auto.offset.store`, which must stay `false`).
    #[serde(default)]
    pub properties: BTreeMap<String, PropertyValue>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnOffsetReset {
    #[default]
    Skip,
    Fail,
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

/// A librdkafka property value: YAML scalars of any type are passed on as text; an empty
/// value (`key:` or `${VAR:-}`) leaves the property unset, so a file can offer settings
/// that only some deployments fill in.
#[derive(Debug, Clone, PartialEq)]
pub enum PropertyValue {
    Text(String),
    Integer(i64),
    Float(f64),
    Bool(bool),
    Unset,
}

impl PropertyValue {
    pub fn is_set(&self) -> bool {
        !matches!(self, PropertyValue::Unset)
    }
}

impl<'de> Deserialize<'de> for PropertyValue {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Scalar;
        impl serde::de::Visitor<'_> for Scalar {
            type Value = PropertyValue;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a string, number or boolean (librdkafka property values are text)")
            }
            fn visit_str<E>(self, v: &str) -> Result<PropertyValue, E> {
                Ok(PropertyValue::Text(v.to_owned()))
            }
            fn visit_i64<E>(self, v: i64) -> Result<PropertyValue, E> {
                Ok(PropertyValue::Integer(v))
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<PropertyValue, E> {
                Ok(PropertyValue::Text(v.to_string()))
            }
            fn visit_f64<E>(self, v: f64) -> Result<PropertyValue, E> {
                Ok(PropertyValue::Float(v))
            }
            fn visit_bool<E>(self, v: bool) -> Result<PropertyValue, E> {
                Ok(PropertyValue::Bool(v))
            }
            fn visit_unit<E>(self) -> Result<PropertyValue, E> {
                Ok(PropertyValue::Unset)
            }
            fn visit_none<E>(self) -> Result<PropertyValue, E> {
                Ok(PropertyValue::Unset)
            }
        }
        deserializer.deserialize_any(Scalar)
    }
}

impl std::fmt::Display for PropertyValue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PropertyValue::Text(v) => f.write_str(v),
            PropertyValue::Integer(v) => write!(f, "{v}"),
            PropertyValue::Float(v) => write!(f, "{v}"),
            PropertyValue::Bool(v) => write!(f, "{v}"),
            PropertyValue::Unset => Ok(()),
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

impl PipelineConfig {
    /// Puts the shared `kafka.properties` into every client's own `properties` (which
    /// win), so each client's map is complete.
    pub fn share_kafka_properties(&mut self) {
        let Some(shared) = self.kafka.as_ref().map(|k| k.properties.clone()) else {
            return;
        };
        let fill = |own: &mut BTreeMap<String, PropertyValue>| {
            for (key, value) in &shared {
                own.entry(key.clone()).or_insert_with(|| value.clone());
            }
        };
        let SourceConfig::Kafka(source) = &mut self.source;
        fill(&mut source.properties);
        for sink in &mut self.sinks {
            if let SinkConfig::Kafka(out) = sink {
                fill(&mut out.properties);
            }
        }
        if let Some(out) = &mut self.dead_letter.kafka {
            fill(&mut out.properties);
        }
    }

    /// Credentials among the Kafka clients' properties (`sasl.password`, ...), with the
    /// property's name: never printed, however they got into the file.
    pub fn credentials(&self) -> Vec<(&str, &str)> {
        let SourceConfig::Kafka(source) = &self.source;
        let mut maps = vec![&source.properties];
        for sink in &self.sinks {
            if let SinkConfig::Kafka(out) = sink {
                maps.push(&out.properties);
            }
        }
        maps.extend(self.dead_letter.kafka.as_ref().map(|k| &k.properties));
        maps.into_iter()
            .flat_map(|m| m.iter())
            .filter(|(key, _)| redact::SENSITIVE_PROPERTIES.contains(&key.as_str()))
            .filter_map(|(key, value)| match value {
                PropertyValue::Text(text) => Some((key.as_str(), text.as_str())),
                _ => None,
            })
            .collect()
    }
}

impl SinkConfig {
    pub fn kind(&self) -> &'static str {
        match self {
            SinkConfig::Parquet(_) => "parquet",
            SinkConfig::Kafka(_) => "kafka",
        }
    }
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
    /// `max_age` of a partition's first file group after it is assigned (or the pipeline
    /// starts), so a restarted pipeline makes its first progress durable and committed
    /// this soon, however often it is restarted. The small file is merged into its
    /// segment's file later. Default: `2s` (or `max_age`, if that is shorter).
    #[serde(default, with = "humantime_serde")]
    pub first_max_age: Option<Duration>,
    /// Files are aligned to segments of this many source offsets (`k·N ..= (k+1)·N − 1`):
    /// a segment's files are merged into one per directory when the partition moves past
    /// it, so file names depend on offsets only and a backfill rewrites the same names.
    /// Default: `max_rows`.
    #[serde(default)]
    pub segment_offsets: Option<u64>,
}

impl RollConfig {
    /// `first_max_age`, defaulted and never above `max_age`.
    pub fn first_max_age(&self) -> Duration {
        self.first_max_age
            .unwrap_or(Duration::from_secs(2))
            .min(self.max_age)
    }

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
            first_max_age: None,
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
    /// Longer payloads are cut to this size, flagged in the headers
    /// `sluice.payload.truncated` and `sluice.payload.original.bytes` (the Parquet dead
    /// letters keep them whole). Default: `512 KiB`, under Kafka's default 1 MB limit.
    #[serde(default = "default_dead_letter_payload")]
    pub max_payload_bytes: ByteSize,
    #[serde(default)]
    pub properties: BTreeMap<String, PropertyValue>,
}

fn default_models() -> PathBuf {
    PathBuf::from("../models")
}
fn default_connect_timeout() -> Duration {
    Duration::from_secs(10)
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
fn default_dead_letter_payload() -> ByteSize {
    ByteSize::kib(512)
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
    #[serde(default)]
    metrics: Option<Value>,
    #[serde(default)]
    kafka: Option<Value>,
}

/// Loads and validates a pipeline file, reading `${VAR}`s from the process environment.
pub fn load(file: &Path) -> Result<Pipeline, ConfigError> {
    load_with_vars(file, &|name| std::env::var(name).ok())
}

/// The top-level keys of a pipeline file.
const PIPELINE_KEYS: &[&str] = &[
    "name",
    "source",
    "decode",
    "stages",
    "models",
    "onnxruntime",
    "retrain",
    "sinks",
    "dead_letter",
    "metrics",
    "kafka",
];

/// Loads and validates a pipeline file with `${VAR}`s resolved by `lookup` (the demo and
/// tests point brokers at an in-process cluster this way).
pub fn load_with_vars(
    file: &Path,
    lookup: &dyn Fn(&str) -> Option<String>,
) -> Result<Pipeline, ConfigError> {
    let yaml = YamlFile::read(file, "pipeline", PIPELINE_KEYS, lookup)?;
    let mut config = parse_sections(&yaml.root).map_err(|issues| yaml.error(issues))?;
    config.share_kafka_properties();
    let mut redactions = yaml.redactions.clone();
    for (property, value) in config.credentials() {
        redactions.add_secret(value, format!("[{property}]"));
    }
    let yaml = YamlFile { redactions, ..yaml };
    let base_dir = file.parent().unwrap_or(Path::new("."));
    let mut pipeline = validate::validate(config, base_dir).map_err(|issues| yaml.error(issues))?;
    pipeline.retrain = scheduled_retrain(&pipeline, &yaml, lookup)?;
    pipeline.redactions = yaml.redactions;
    Ok(pipeline)
}

/// The pipeline's `retrain` job, loaded with the same variables, and its schedule.
fn scheduled_retrain(
    pipeline: &Pipeline,
    yaml: &YamlFile,
    lookup: &dyn Fn(&str) -> Option<String>,
) -> Result<Option<ScheduledRetrain>, ConfigError> {
    let Some(retrain) = &pipeline.config.retrain else {
        return Ok(None);
    };
    let issue = |path: &str, message: String| {
        yaml.error(vec![ConfigIssue {
            path: path.into(),
            line: None,
            message,
        }])
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
    if let Some(kafka) = section("kafka") {
        issues.extend(typed::<KafkaClientsConfig>(kafka, "kafka").err());
    }
    issues.dedup();
    if issues.is_empty() {
        issues.push(first);
    }
    Err(issues)
}

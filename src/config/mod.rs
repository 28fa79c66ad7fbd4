//! Config files: typed serde structs that mirror the YAML 1:1, and the file machinery
//! they share. This module imports nothing else from the crate; `pipeline` turns a parsed
//! file into a checked plan.
//!
//! - the pipeline file: [`PipelineConfig`] here, the stages in `stages`, the sinks in
//!   `sinks`; [`parse`] reports every independent mistake at once;
//! - the retrain job file: [`job`];
//! - reading any of them: `file` (text, YAML, typed parse with key paths),
//!   `interpolate` (`${VAR}`, `${VAR:-default}`, `${file:PATH}`), `locate` (key path
//!   -> line), `error` (file, key path, line, what was expected), [`redact`] (values
//!   from outside the file shown as `${NAME}`), [`limits`] (bounds on every duration and
//!   count).
//!
//! Relative paths: what defines the pipeline (`decode.schema`, `models`, tokenizer and
//! lookup files, `onnxruntime.library`) is relative to the pipeline file; output paths are
//! relative to the working directory.

mod error;
mod file;
mod interpolate;
pub mod job;
pub mod limits;
mod locate;
pub mod parse;
pub mod redact;
mod sinks;
mod stages;
pub mod storage;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use bytesize::ByteSize;
use serde::Deserialize;

pub use error::{ConfigError, ConfigIssue, Issues};
pub use file::{typed, YamlFile};
pub use interpolate::{interpolate, InterpolationIssue, Substitution};
pub use locate::LineIndex;
pub use parse::{parse_sections, PIPELINE_KEYS};
pub use redact::Redactions;
pub use sinks::{
    AlertConfig, Compression, DeadLetterConfig, DeadLetterKafkaConfig, DeltaSinkConfig,
    KafkaSinkConfig, OutputFormat, ParquetSinkConfig, RollConfig, SinkConfig, SubjectStrategy,
    DEFAULT_COMMIT_INTERVAL,
};
pub use stages::{
    AccuracyConfig, BandConfig, CanaryConfig, DeriveConfig, Device, DriftConfig, EnrichConfig,
    InferConfig, InputColumns, LabelSource, LabelsTopicConfig, LookupConfig, OnnxRuntimeConfig,
    ShadowConfig, SqlConfig, StageConfig, TokenizeConfig, WindowConfig, WindowFeature, WindowField,
};
pub use storage::StorageConfig;
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
    /// How to reach object-store URLs used as paths, per URL prefix (see
    /// [`storage`]). Default: each service's standard environment.
    #[serde(default)]
    pub storage: BTreeMap<String, StorageConfig>,
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
    /// Also run when an infer stage raises a drift event. Default: false.
    #[serde(default)]
    pub on_drift: bool,
    /// At least this long between two runs started by drift. Default: `1h`.
    #[serde(default = "default_drift_interval", with = "humantime_serde")]
    pub min_interval: Duration,
}

fn default_drift_interval() -> Duration {
    Duration::from_secs(3600)
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
    /// Record headers kept as columns (after the record's fields): a name (a `utf8`
    /// column of that name), or `{name, column, type: utf8 | binary}`.
    #[serde(default)]
    pub headers: Vec<HeaderColumn>,
}

/// One record header read into a column.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
pub enum HeaderColumn {
    Name(String),
    Spec {
        name: String,
        #[serde(default)]
        column: Option<String>,
        #[serde(default, rename = "type")]
        kind: HeaderType,
    },
}

/// How a header's bytes become a column.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HeaderType {
    /// Text (bytes that are not UTF-8 are replaced with U+FFFD).
    #[default]
    Utf8,
    Binary,
}

impl HeaderColumn {
    /// The header's name on the record.
    pub fn name(&self) -> &str {
        match self {
            HeaderColumn::Name(name) | HeaderColumn::Spec { name, .. } => name,
        }
    }

    /// The column it becomes.
    pub fn column(&self) -> &str {
        match self {
            HeaderColumn::Name(name) => name,
            HeaderColumn::Spec { name, column, .. } => column.as_deref().unwrap_or(name),
        }
    }

    pub fn kind(&self) -> HeaderType {
        match self {
            HeaderColumn::Name(_) => HeaderType::Utf8,
            HeaderColumn::Spec { kind, .. } => *kind,
        }
    }
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
    /// Also cut a partition's batch as soon as the consumer has no further record
    /// buffered (natural batching): at low rates a record does not wait for `max_wait`,
    /// under load (records queue up while the pipeline is busy) batches still fill to
    /// `max_rows`. For latency-bound pipelines; a backfill ignores it. Default: false.
    #[serde(default)]
    pub close_when_idle: bool,
}

impl Default for BatchConfig {
    fn default() -> Self {
        BatchConfig {
            max_rows: default_batch_rows(),
            max_wait: default_batch_wait(),
            close_when_idle: false,
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
    /// Record format. Default: `json` (one JSON object per Kafka message); `avro`: the
    /// Confluent wire format (magic byte, schema id, Avro body) with a schema registry.
    #[serde(default)]
    pub format: RecordFormat,
    /// Schema file, relative to the pipeline file: sluice's JSON schema (see
    /// `schemas/README.md`), or for `format: avro` an Avro schema (`.avsc`), the reader
    /// schema writers' schemas are resolved to.
    pub schema: PathBuf,
    /// The schema registry writer schemas are fetched from by id (`format: avro` or
    /// `protobuf`).
    #[serde(default)]
    pub schema_registry: Option<SchemaRegistryConfig>,
    /// For `format: protobuf`: the message of the `.proto` file records are read as (its
    /// full name, e.g. `sluice.CustomerFeedback`). Default: the file's first message.
    #[serde(default)]
    pub message: Option<String>,
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
    Avro,
    Protobuf,
}

/// `decode.schema_registry`: a Confluent-compatible schema registry.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SchemaRegistryConfig {
    /// Base URL, e.g. `http://registry:8081`.
    pub url: String,
    /// HTTP basic auth (Confluent Cloud: the API key and secret).
    #[serde(default)]
    pub username: Option<String>,
    #[serde(default)]
    pub password: Option<String>,
    /// A bearer token, instead of basic auth.
    #[serde(default)]
    pub bearer_token: Option<String>,
    /// Per request. Default: `10s`.
    #[serde(default = "default_registry_timeout", with = "humantime_serde")]
    pub timeout: Duration,
}

impl SchemaRegistryConfig {
    /// What is wrong with the settings, as (key under the block, message).
    pub fn problems(&self) -> Vec<(&'static str, String)> {
        let mut problems = Vec::new();
        let scheme_ok = url::Url::parse(&self.url)
            .is_ok_and(|u| matches!(u.scheme(), "http" | "https") && u.host().is_some());
        if !scheme_ok {
            problems.push((
                "url",
                format!("expected an http:// or https:// URL, found `{}`", self.url),
            ));
        }
        if self.timeout < Duration::from_millis(100) || self.timeout > Duration::from_secs(600) {
            problems.push(("timeout", "expected between 100ms and 10m".to_owned()));
        }
        let given = |v: &Option<String>| v.as_deref().is_some_and(|v| !v.is_empty());
        if given(&self.password) && !given(&self.username) {
            problems.push(("password", "set `username` with it".to_owned()));
        }
        problems
    }
}

fn default_registry_timeout() -> Duration {
    Duration::from_secs(10)
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UnknownFields {
    #[default]
    Ignore,
    Reject,
}

impl PipelineConfig {
    /// The consumer group: `source.kafka.group_id` or `sluice-<name>`.
    pub fn group_id(&self) -> String {
        let SourceConfig::Kafka(kafka) = &self.source;
        kafka
            .group_id
            .clone()
            .unwrap_or_else(|| format!("sluice-{}", self.name))
    }

    /// Puts the shared `kafka.properties` into every client's own `properties` (which
    /// win), so each client's map is complete.
    /// Every schema registry the pipeline talks to.
    fn registries(&self) -> impl Iterator<Item = &SchemaRegistryConfig> {
        let sinks = self.sinks.iter().filter_map(|sink| match sink {
            SinkConfig::Kafka(out) => out.schema_registry.as_ref(),
            _ => None,
        });
        self.decode.schema_registry.iter().chain(sinks)
    }

    /// Kafka sinks writing Avro without their own `schema_registry` use the decoder's.
    pub fn share_schema_registry(&mut self) {
        let Some(shared) = self.decode.schema_registry.clone() else {
            return;
        };
        for sink in &mut self.sinks {
            if let SinkConfig::Kafka(out) = sink {
                if out.format != OutputFormat::Json && out.schema_registry.is_none() {
                    out.schema_registry = Some(shared.clone());
                }
            }
        }
    }

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
        let storage = self
            .storage
            .values()
            .flat_map(StorageConfig::credentials)
            .map(|(key, value)| (key as &str, value));
        maps.into_iter()
            .flat_map(|m| m.iter())
            .filter(|(key, _)| redact::SENSITIVE_PROPERTIES.contains(&key.as_str()))
            .filter_map(|(key, value)| match value {
                PropertyValue::Text(text) => Some((key.as_str(), text.as_str())),
                _ => None,
            })
            .chain(storage)
            .chain(self.registries().flat_map(|r| {
                [
                    ("schema_registry.password", r.password.as_deref()),
                    ("schema_registry.bearer_token", r.bearer_token.as_deref()),
                ]
                .into_iter()
                .filter_map(|(key, value)| Some((key, value?)))
            }))
            .collect()
    }
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

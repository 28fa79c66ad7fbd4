//! The `sinks` and `dead_letter` sections: a Parquet dataset, an output topic, and where
//! bad records go. Typed structs that mirror the YAML; defaults in each doc comment.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use bytesize::ByteSize;
use serde::Deserialize;

use super::{PropertyValue, SchemaRegistryConfig};

/// One entry of `sinks`.
// Parsed once per pipeline file: the variants' sizes do not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "snake_case")]
pub enum SinkConfig {
    Parquet(ParquetSinkConfig),
    Kafka(KafkaSinkConfig),
    Delta(DeltaSinkConfig),
}

impl SinkConfig {
    pub fn kind(&self) -> &'static str {
        match self {
            SinkConfig::Parquet(_) => "parquet",
            SinkConfig::Kafka(_) => "kafka",
            SinkConfig::Delta(_) => "delta",
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

/// A Delta Lake table (local directory or object-store URL): each commit appends a file
/// group and records, per source partition, the last offset it holds (a `txn` action).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeltaSinkConfig {
    /// Table root (created with the rows' schema if there is no table yet).
    pub path: PathBuf,
    /// Partition columns of a new table (plain columns of string, integer, boolean or date
    /// type; values go in the file paths and the log, not in the files). Default: none.
    #[serde(default)]
    pub partition_by: Vec<String>,
    /// `zstd` (default) or `none`.
    #[serde(default)]
    pub compression: Compression,
    /// When a partition's open files are committed: `max_rows`, `max_bytes`, `max_age`,
    /// `first_max_age` as for Parquet (`segment_offsets` does not apply).
    #[serde(default)]
    pub roll: RollConfig,
    /// Rows per Parquet row group. Default: 65536.
    #[serde(default = "default_row_group_rows")]
    pub row_group_rows: usize,
    /// Columns written. Default: all (the provenance columns always).
    #[serde(default)]
    pub columns: Option<Vec<String>>,
    /// A checkpoint is written every this many table versions, so readers replay a short
    /// log. Default: 10 (as Spark).
    #[serde(default = "default_checkpoint_interval")]
    pub checkpoint_interval: u64,
}

fn default_checkpoint_interval() -> u64 {
    10
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
    /// Message headers from columns: header name -> column (binary columns as their
    /// bytes, others as text; a null value sends no header).
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// librdkafka producer properties. sluice sets `acks=all` and
    /// `enable.idempotence=true` unless overridden here.
    #[serde(default)]
    pub properties: BTreeMap<String, PropertyValue>,
    /// Send only rows that raise an alert (with hysteresis per key). Default: every row.
    #[serde(default)]
    pub alert: Option<AlertConfig>,
    /// Message format: `json` (default, one object per row) or `avro` (the Confluent wire
    /// format, the schema registered in the schema registry).
    #[serde(default)]
    pub format: OutputFormat,
    /// For `format: avro`. Default: `decode.schema_registry`.
    #[serde(default)]
    pub schema_registry: Option<SchemaRegistryConfig>,
    /// The subject the schema is registered under: `topic` (`TOPIC-value`, the default),
    /// `record` (the record's full name) or `topic_record` (`TOPIC-RECORD`).
    #[serde(default)]
    pub subject_strategy: SubjectStrategy,
    /// The Avro record's full name. Default: `sluice.<topic, with `_` for other characters>`.
    #[serde(default)]
    pub record_name: Option<String>,
    /// Register the schema derived from the output columns (default), or, when `false`,
    /// use the subject's `schema_version` as it is (a registry that refuses writes).
    #[serde(default = "yes")]
    pub auto_register: bool,
    /// With `auto_register: false`: the version to write with, a number or `latest`
    /// (default).
    #[serde(default)]
    pub schema_version: Option<String>,
    /// Write the topic in Kafka transactions that also commit the consumer's offsets, so a
    /// `read_committed` consumer sees each output message once, even across `kill -9`
    /// (needs a broker with transactions; one such sink per pipeline; `sluice run` only,
    /// a backfill writes at-least-once). Default: false.
    #[serde(default)]
    pub exactly_once: bool,
    /// With `exactly_once`: how often a transaction commits, which is how late a
    /// `read_committed` consumer sees the output; each commit also makes every other
    /// sink's open files durable. Default: `1s`.
    #[serde(default, with = "humantime_serde")]
    pub commit_interval: Option<Duration>,
}

/// Transactions commit this often unless `commit_interval` says otherwise.
pub const DEFAULT_COMMIT_INTERVAL: Duration = Duration::from_secs(1);

fn yes() -> bool {
    true
}

/// How a Kafka sink encodes rows.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OutputFormat {
    #[default]
    Json,
    Avro,
    Protobuf,
}

/// Confluent's subject name strategies.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SubjectStrategy {
    #[default]
    Topic,
    Record,
    TopicRecord,
}

impl KafkaSinkConfig {
    /// The Avro record's full name.
    pub fn record_full_name(&self) -> String {
        self.record_name.clone().unwrap_or_else(|| {
            let name: String = self
                .topic
                .chars()
                .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
                .collect();
            format!("sluice.{name}")
        })
    }

    /// The registry subject the value schema goes under.
    pub fn subject(&self) -> String {
        match self.subject_strategy {
            SubjectStrategy::Topic => format!("{}-value", self.topic),
            SubjectStrategy::Record => self.record_full_name(),
            SubjectStrategy::TopicRecord => format!("{}-{}", self.topic, self.record_full_name()),
        }
    }
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
    /// A Delta Lake table of dead letters (same columns as the Parquet dataset).
    #[serde(default)]
    pub delta: Option<DeltaSinkConfig>,
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

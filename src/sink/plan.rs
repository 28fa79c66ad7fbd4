//! Planning the sinks at load time: which outputs a run writes (a backfill may leave some
//! out) and the checks serde cannot make (partition keys and columns that exist in the
//! rows the sinks receive, roll limits in range, somewhere for bad records to go). The
//! result, [`Plan`], is what [`super::build`] builds from.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use arrow::datatypes::{Schema, SchemaRef};
use rdkafka::ClientConfig;

use super::parquet::partition::{PartitionKey, Partitioner};
use crate::config::PropertyValue;
use crate::config::{
    limits, ConfigIssue, DeadLetterConfig, DeadLetterKafkaConfig, DeltaSinkConfig, Issues,
    KafkaSinkConfig, ParquetSinkConfig, RollConfig, SinkConfig, StorageConfig,
};
use crate::kafka_client::{client_config, PRODUCER_DEFAULTS};

/// The largest dead-letter payload a file may allow: 256 MiB.
const MAX_PAYLOAD_BYTES: u64 = 256 << 20;

/// A Kafka output's producer configuration: its own `brokers` or `default_brokers` (the
/// source's), sluice's producer defaults, then its `properties`.
pub fn producer_config(
    default_brokers: &str,
    brokers: &Option<String>,
    properties: &BTreeMap<String, PropertyValue>,
) -> ClientConfig {
    let brokers = brokers.as_deref().unwrap_or(default_brokers);
    client_config(brokers, PRODUCER_DEFAULTS, properties, &[])
}

/// The outputs of a run.
#[derive(Debug, Clone)]
pub struct Plan {
    /// The sinks, named `sinks[N].KIND`, in order.
    pub outputs: Vec<(String, SinkConfig)>,
    pub dead_letter_parquet: Option<ParquetSinkConfig>,
    pub dead_letter_delta: Option<DeltaSinkConfig>,
    pub dead_letter_kafka: Option<DeadLetterKafkaConfig>,
    /// What the sinks receive (the last stage's output).
    pub rows: SchemaRef,
    /// The brokers of Kafka sinks that name none: the source's.
    pub default_brokers: String,
    /// How to reach object-store URLs among the Parquet paths (the pipeline's `storage`).
    pub storage: BTreeMap<String, StorageConfig>,
    /// The pipeline's name (Delta tables record offsets under it).
    pub pipeline: String,
}

impl Plan {
    /// Checks `sinks` and `dead_letter` against the `rows` they receive (`None`: the
    /// stages did not plan, so column checks are skipped); every problem at once.
    pub fn new(
        sinks: &[SinkConfig],
        dead_letter: &DeadLetterConfig,
        rows: Option<&SchemaRef>,
        default_brokers: &str,
        storage: &BTreeMap<String, StorageConfig>,
        pipeline: &str,
    ) -> Result<Plan, Vec<ConfigIssue>> {
        let mut issues = Issues(Vec::new());
        let schema = rows.map(|r| r.as_ref());
        if sinks.is_empty() {
            issues.add("sinks", "expected at least one sink (`parquet` or `kafka`)");
        }
        let mut outputs = Vec::with_capacity(sinks.len());
        for (i, sink) in sinks.iter().enumerate() {
            let name = format!("sinks[{i}].{}", sink.kind());
            match sink {
                SinkConfig::Parquet(parquet) => {
                    check_parquet(parquet, schema, storage, &name, &mut issues)
                }
                SinkConfig::Kafka(out) => check_kafka(out, schema, &name, &mut issues),
                SinkConfig::Delta(delta) => check_delta(delta, schema, storage, &name, &mut issues),
            }
            outputs.push((name, sink.clone()));
        }
        check_one_transaction(&outputs, &mut issues);
        if dead_letter.parquet.is_none()
            && dead_letter.delta.is_none()
            && dead_letter.kafka.is_none()
        {
            issues.add(
                "dead_letter",
                "expected `parquet`, `delta`, `kafka` or several: bad records must go somewhere",
            );
        }
        if let Some(delta) = &dead_letter.delta {
            let letters = crate::dead_letter::schema();
            check_delta(
                delta,
                Some(&letters),
                storage,
                "dead_letter.delta",
                &mut issues,
            );
        }
        if let Some(parquet) = &dead_letter.parquet {
            let letters = crate::dead_letter::schema();
            check_parquet(
                parquet,
                Some(&letters),
                storage,
                "dead_letter.parquet",
                &mut issues,
            );
        }
        if let Some(out) = &dead_letter.kafka {
            if out.topic.is_empty() {
                issues.add("dead_letter.kafka.topic", "expected a topic name");
            }
            issues.check(
                "dead_letter.kafka.max_payload_bytes",
                limits::count(out.max_payload_bytes.as_u64(), 0, MAX_PAYLOAD_BYTES),
            );
        }
        match (issues.0.is_empty(), rows) {
            (true, Some(rows)) => Ok(Plan {
                outputs,
                dead_letter_parquet: dead_letter.parquet.clone(),
                dead_letter_delta: dead_letter.delta.clone(),
                dead_letter_kafka: dead_letter.kafka.clone(),
                rows: rows.clone(),
                default_brokers: default_brokers.to_owned(),
                storage: storage.clone(),
                pipeline: pipeline.to_owned(),
            }),
            _ => Err(issues.0),
        }
    }

    /// How often the exactly-once Kafka sink commits its transaction, if there is one.
    pub fn commit_interval(&self) -> Option<std::time::Duration> {
        self.outputs.iter().find_map(|(_, sink)| match sink {
            SinkConfig::Kafka(out) if out.exactly_once => Some(
                out.commit_interval
                    .unwrap_or(crate::config::DEFAULT_COMMIT_INTERVAL),
            ),
            _ => None,
        })
    }

    /// How many sinks acknowledge each batch: the outputs and dead-letter targets.
    pub fn count(&self) -> usize {
        self.outputs.len()
            + usize::from(self.dead_letter_parquet.is_some())
            + usize::from(self.dead_letter_delta.is_some())
            + usize::from(self.dead_letter_kafka.is_some())
    }

    /// Every output's name, dead-letter targets included (`dead_letter.parquet`).
    pub fn names(&self) -> Vec<(String, &'static str)> {
        let mut names: Vec<(String, &'static str)> = self
            .outputs
            .iter()
            .map(|(name, sink)| (name.clone(), sink.kind()))
            .collect();
        if self.dead_letter_parquet.is_some() {
            names.push(("dead_letter.parquet".into(), "parquet"));
        }
        if self.dead_letter_delta.is_some() {
            names.push(("dead_letter.delta".into(), "delta"));
        }
        if self.dead_letter_kafka.is_some() {
            names.push(("dead_letter.kafka".into(), "kafka"));
        }
        names
    }

    /// Keeps only the outputs named in `keep` (see `sluice backfill --sinks`).
    pub fn keep(&mut self, keep: &BTreeSet<String>) {
        self.outputs.retain(|(name, _)| keep.contains(name));
        if !keep.contains("dead_letter.parquet") {
            self.dead_letter_parquet = None;
        }
        if !keep.contains("dead_letter.delta") {
            self.dead_letter_delta = None;
        }
        if !keep.contains("dead_letter.kafka") {
            self.dead_letter_kafka = None;
        }
    }

    /// The producer configuration of every Kafka output, with the key its brokers come
    /// from (for start-up checks), in build order.
    pub fn kafka_clients(&self) -> Vec<(String, ClientConfig)> {
        let client = |path: &str, brokers: &Option<String>, properties| {
            let key = match brokers {
                Some(_) => format!("{path}.brokers"),
                None => "source.kafka.brokers".to_owned(),
            };
            (
                key,
                producer_config(&self.default_brokers, brokers, properties),
            )
        };
        let mut clients = Vec::new();
        for (name, sink) in &self.outputs {
            if let SinkConfig::Kafka(out) = sink {
                clients.push(client(name, &out.brokers, &out.properties));
            }
        }
        if let Some(out) = &self.dead_letter_kafka {
            clients.push(client("dead_letter.kafka", &out.brokers, &out.properties));
        }
        clients
    }

    /// Dataset roots of the Parquet outputs, in order (dead letters not counted).
    pub fn parquet_sinks(&self) -> impl Iterator<Item = &Path> {
        self.outputs.iter().filter_map(|(_, s)| match s {
            SinkConfig::Parquet(p) => Some(p.path.as_path()),
            SinkConfig::Kafka(_) | SinkConfig::Delta(_) => None,
        })
    }

    /// Roots of every Parquet dataset the run writes: its outputs', then the dead letters'.
    pub fn parquet_roots(&self) -> impl Iterator<Item = &Path> {
        let dead_letters = self.dead_letter_parquet.as_ref();
        self.parquet_sinks()
            .chain(dead_letters.map(|p| p.path.as_path()))
    }
}

fn check_delta(
    sink: &DeltaSinkConfig,
    rows: Option<&Schema>,
    storage: &BTreeMap<String, StorageConfig>,
    path: &str,
    issues: &mut Issues,
) {
    let shared = Dataset::new(&sink.path, &sink.columns, &sink.roll, sink.row_group_rows);
    check_dataset(&shared, rows, storage, path, issues);
    if let Some(rows) = rows {
        if let Err(e) = super::delta::check(rows, sink) {
            issues.add(format!("{path}.partition_by"), e.to_string());
        }
    }
    if sink.roll.segment_offsets.is_some() {
        issues.add(
            format!("{path}.roll.segment_offsets"),
            "applies to `parquet` sinks only (a Delta table's files are found through its log)",
        );
    }
    issues.check(
        format!("{path}.checkpoint_interval"),
        limits::count(sink.checkpoint_interval, 1, 1_000_000),
    );
}

fn check_parquet(
    sink: &ParquetSinkConfig,
    rows: Option<&Schema>,
    storage: &BTreeMap<String, StorageConfig>,
    path: &str,
    issues: &mut Issues,
) {
    let shared = Dataset::new(&sink.path, &sink.columns, &sink.roll, sink.row_group_rows);
    check_dataset(&shared, rows, storage, path, issues);
    let mut keys = Vec::new();
    for (j, spec) in sink.partition_by.iter().enumerate() {
        match PartitionKey::parse(spec) {
            Ok(key) => keys.push(key),
            Err(e) => issues.add(format!("{path}.partition_by[{j}]"), e.to_string()),
        }
    }
    if let (Some(rows), true) = (rows, keys.len() == sink.partition_by.len()) {
        if let Err(e) = Partitioner::new(keys, rows) {
            issues.add(format!("{path}.partition_by"), e.to_string());
        }
    }
    if let Some(segment) = sink.roll.segment_offsets {
        issues.check(
            format!("{path}.roll.segment_offsets"),
            limits::count(segment, 1, 1_000_000_000_000),
        );
    }
    issues.check(
        format!("{path}.max_open_files"),
        limits::count(sink.max_open_files, 1, 10_000),
    );
}

/// What Parquet datasets and Delta tables are configured alike.
struct Dataset<'a> {
    path: &'a Path,
    columns: &'a Option<Vec<String>>,
    roll: &'a RollConfig,
    row_group_rows: usize,
}

impl<'a> Dataset<'a> {
    fn new(
        path: &'a Path,
        columns: &'a Option<Vec<String>>,
        roll: &'a RollConfig,
        row_group_rows: usize,
    ) -> Self {
        Dataset {
            path,
            columns,
            roll,
            row_group_rows,
        }
    }
}

/// The checks Parquet datasets and Delta tables share: the storage URL, the columns, the
/// roll limits and the row group size.
fn check_dataset(
    sink: &Dataset<'_>,
    rows: Option<&Schema>,
    storage: &BTreeMap<String, StorageConfig>,
    path: &str,
    issues: &mut Issues,
) {
    if let Err(e) = crate::storage::check(sink.path, storage) {
        issues.add(format!("{path}.path"), crate::telemetry::chain(&e));
    }
    if let Some(rows) = rows {
        for (j, column) in sink.columns.iter().flatten().enumerate() {
            if rows.column_with_name(column).is_none() {
                issues.add(format!("{path}.columns[{j}]"), unknown_column(column, rows));
            }
        }
    }
    let roll = sink.roll;
    issues.check(
        format!("{path}.roll.max_rows"),
        limits::count(roll.max_rows, 1, 1_000_000_000),
    );
    issues.check(
        format!("{path}.roll.max_bytes"),
        limits::count(roll.max_bytes.as_u64(), 1024, 16 << 30),
    );
    issues.check(
        format!("{path}.roll.max_age"),
        limits::duration(roll.max_age, 10 * limits::MILLISECOND, limits::DAY),
    );
    if let Some(first) = roll.first_max_age {
        issues.check(
            format!("{path}.roll.first_max_age"),
            limits::duration(first, 10 * limits::MILLISECOND, limits::DAY),
        );
    }
    issues.check(
        format!("{path}.row_group_rows"),
        limits::count(sink.row_group_rows, 1, 16_000_000),
    );
}

/// `format` and the Avro settings that go with it.
fn check_kafka_format(sink: &KafkaSinkConfig, path: &str, issues: &mut Issues) {
    use crate::config::OutputFormat;
    let avro_only = sink.schema_registry.is_some()
        || sink.record_name.is_some()
        || sink.schema_version.is_some()
        || !sink.auto_register;
    match (sink.format, &sink.schema_registry) {
        (OutputFormat::Json, _) if avro_only => issues.add(
            format!("{path}.format"),
            "schema_registry, record_name, auto_register and schema_version are for format: avro or protobuf",
        ),
        (OutputFormat::Avro, None) => issues.add(
            format!("{path}.schema_registry"),
            "format: avro needs a schema registry: set it here or in decode.schema_registry",
        ),
        (OutputFormat::Protobuf, None) => issues.add(
            format!("{path}.schema_registry"),
            "format: protobuf needs a schema registry: set it here or in decode.schema_registry",
        ),
        (OutputFormat::Avro | OutputFormat::Protobuf, Some(registry)) => {
            for (key, message) in registry.problems() {
                issues.add(format!("{path}.schema_registry.{key}"), message);
            }
        }
        _ => {}
    }
    let name = sink.record_full_name();
    let valid = name.split('.').all(|part| {
        let mut chars = part.chars();
        chars
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
            && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
    });
    if !valid {
        issues.add(
            format!("{path}.record_name"),
            format!("`{name}` is not an Avro full name (NAMESPACE.NAME, letters, digits, `_`)"),
        );
    }
    if sink.auto_register && sink.schema_version.is_some() {
        issues.add(
            format!("{path}.schema_version"),
            "only with auto_register: false (registering writes the derived schema)",
        );
    }
}

/// The consumer's offsets can commit in one transaction only.
fn check_one_transaction(outputs: &[(String, SinkConfig)], issues: &mut Issues) {
    let transactional: Vec<&str> = outputs
        .iter()
        .filter(|(_, sink)| matches!(sink, SinkConfig::Kafka(out) if out.exactly_once))
        .map(|(name, _)| name.as_str())
        .collect();
    if let [first, rest @ ..] = transactional.as_slice() {
        for name in rest {
            issues.add(
                format!("{name}.exactly_once"),
                format!(
                    "only one kafka sink can be exactly-once (the consumer's offsets commit in \
                     its transaction), and {first} already is"
                ),
            );
        }
    }
}

/// `exactly_once` and what goes with it.
fn check_transactions(sink: &KafkaSinkConfig, path: &str, issues: &mut Issues) {
    if !sink.exactly_once {
        if sink.commit_interval.is_some() {
            issues.add(
                format!("{path}.commit_interval"),
                "only with exactly_once: true (transactions commit at that interval)",
            );
        }
        return;
    }
    if let Some(interval) = sink.commit_interval {
        issues.check(
            format!("{path}.commit_interval"),
            limits::duration(interval, 10 * limits::MILLISECOND, limits::MINUTE),
        );
    }
    let off = |key: &str| {
        sink.properties.get(key).is_some_and(|v| {
            matches!(v, PropertyValue::Bool(false))
                || matches!(v, PropertyValue::Text(t) if t == "false")
        })
    };
    if off("enable.idempotence") {
        issues.add(
            format!("{path}.properties.enable.idempotence"),
            "exactly_once needs the idempotent producer: remove this setting",
        );
    }
}

fn check_kafka(sink: &KafkaSinkConfig, rows: Option<&Schema>, path: &str, issues: &mut Issues) {
    check_kafka_format(sink, path, issues);
    check_transactions(sink, path, issues);
    if sink.topic.is_empty() {
        issues.add(format!("{path}.topic"), "expected a topic name");
    }
    let Some(rows) = rows else { return };
    let known = |column: &str| rows.column_with_name(column).is_some();
    for (j, column) in sink.columns.iter().flatten().enumerate() {
        if !known(column) {
            issues.add(format!("{path}.columns[{j}]"), unknown_column(column, rows));
        }
    }
    for (header, column) in &sink.headers {
        if !known(column) {
            issues.add(
                format!("{path}.headers.{header}"),
                unknown_column(column, rows),
            );
        }
    }
    if let Some(key) = &sink.key {
        if !known(key) {
            issues.add(format!("{path}.key"), unknown_column(key, rows));
        }
    }
    if let Some(alert) = &sink.alert {
        if !known(&alert.key) {
            issues.add(
                format!("{path}.alert.key"),
                unknown_column(&alert.key, rows),
            );
        }
        match rows.column_with_name(&alert.score) {
            Some((_, f)) if f.data_type().is_numeric() => {}
            Some((_, f)) => issues.add(
                format!("{path}.alert.score"),
                format!(
                    "column `{}` is {}, expected a number",
                    alert.score,
                    f.data_type()
                ),
            ),
            None => issues.add(
                format!("{path}.alert.score"),
                unknown_column(&alert.score, rows),
            ),
        }
        if alert.clear_below > alert.raise_above {
            issues.add(
                format!("{path}.alert.clear_below"),
                "expected clear_below <= raise_above (the hysteresis band)",
            );
        }
    }
}

fn unknown_column(column: &str, rows: &Schema) -> String {
    let names: Vec<&str> = rows.fields().iter().map(|f| f.name().as_str()).collect();
    format!(
        "unknown column `{column}`, expected one of: {}",
        names.join(", ")
    )
}

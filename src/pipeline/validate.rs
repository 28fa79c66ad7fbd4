//! Semantic checks of a parsed pipeline file, all reported together, producing the checked
//! [`Pipeline`].
//!
//! These are the mistakes serde cannot see: a schema file that is missing or wrong, a
//! partition key or output column that is not in the rows, a roll threshold of zero, a
//! pipeline with nowhere to put its dead letters.

use std::path::Path;
use std::time::Duration;

use arrow::datatypes::Schema;

use super::Pipeline;
use crate::config::{
    limits, ConfigIssue, KafkaSinkConfig, ParquetSinkConfig, PipelineConfig, SinkConfig,
    SourceConfig,
};
use crate::kafka_client::{check_config, client_config, PRODUCER_DEFAULTS};
use crate::model::Registry;
use crate::sink::parquet::partition::{PartitionKey, Partitioner};
use crate::stage::{self, PlanContext};
use crate::{dead_letter, schema};

/// The largest record (and dead-letter payload) a file may allow: 256 MiB.
const MAX_RECORD_BYTES: u64 = 256 << 20;

struct Issues(Vec<ConfigIssue>);

impl Issues {
    fn add(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.0.push(ConfigIssue {
            path: path.into(),
            line: None,
            message: message.into(),
        });
    }

    fn check(&mut self, path: impl Into<String>, checked: Result<(), String>) {
        if let Err(message) = checked {
            self.add(path, message);
        }
    }
}

pub(super) fn validate(
    config: PipelineConfig,
    base_dir: &Path,
) -> Result<Pipeline, Vec<ConfigIssue>> {
    let mut issues = Issues(Vec::new());
    let name_ok = !config.name.is_empty()
        && config
            .name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if !name_ok {
        issues.add(
            "name",
            "expected letters, digits, `-` or `_` (it names the consumer group)",
        );
    }

    if let Some(metrics) = &config.metrics {
        let port_ok = metrics
            .listen
            .rsplit_once(':')
            .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok());
        if !port_ok {
            issues.add(
                "metrics.listen",
                format!(
                    "expected HOST:PORT (e.g. 0.0.0.0:9464), found `{}`",
                    metrics.listen
                ),
            );
        }
    }

    let SourceConfig::Kafka(kafka) = &config.source;
    if kafka.topics.is_empty() {
        issues.add("source.kafka.topics", "expected at least one topic");
    }
    issues.check(
        "source.kafka.batch.max_rows",
        limits::count(kafka.batch.max_rows, 1, 1_000_000),
    );
    issues.check(
        "source.kafka.batch.max_wait",
        limits::duration(kafka.batch.max_wait, Duration::ZERO, 10 * limits::MINUTE),
    );
    issues.check(
        "source.kafka.connect_timeout",
        limits::duration(kafka.connect_timeout, limits::SECOND, 10 * limits::MINUTE),
    );
    issues.check(
        "decode.max_record_bytes",
        limits::count(config.decode.max_record_bytes.as_u64(), 1, MAX_RECORD_BYTES),
    );
    if let Some(retrain) = &config.retrain {
        if let Some(every) = retrain.every {
            issues.check(
                "retrain.every",
                limits::duration(every, limits::SECOND, limits::YEAR),
            );
        }
    }
    if kafka.properties.contains_key("enable.auto.offset.store") {
        issues.add(
            "source.kafka.properties.enable.auto.offset.store",
            "sluice stores offsets itself, only after every sink made a batch durable; remove this key",
        );
    }

    check_clients(&config, &mut issues);

    let schema_path = base_dir.join(&config.decode.schema);
    let record_schema = match schema::load(&schema_path) {
        Ok(record) => Some(record.fields),
        Err(e) => {
            issues.add("decode.schema", e.to_string());
            None
        }
    };
    let row_schema = record_schema.as_deref().map(schema::with_provenance);
    let plan_context = PlanContext {
        base_dir: base_dir.to_owned(),
        registry: Registry::new(base_dir.join(&config.models)),
    };
    let stage_schemas = match &row_schema {
        Some(rows) => match stage::plan(&config.stages, rows, &plan_context) {
            Ok(schemas) => Some(schemas),
            Err(stage_issues) => {
                issues.0.extend(stage_issues);
                None
            }
        },
        None => None,
    };
    // Sinks see the last stage's output; when the stages did not plan, skip column checks.
    let sink_schema = match (&stage_schemas, &row_schema) {
        (Some(stages), Some(rows)) => Some(stages.last().unwrap_or(rows).clone()),
        _ => None,
    };

    if config.sinks.is_empty() {
        issues.add("sinks", "expected at least one sink (`parquet` or `kafka`)");
    }
    for (i, sink) in config.sinks.iter().enumerate() {
        match sink {
            SinkConfig::Parquet(parquet) => check_parquet(
                parquet,
                sink_schema.as_deref(),
                &format!("sinks[{i}].parquet"),
                &mut issues,
            ),
            SinkConfig::Kafka(out) => check_kafka(
                out,
                sink_schema.as_deref(),
                &format!("sinks[{i}].kafka"),
                &mut issues,
            ),
        }
    }

    let dead_letter = &config.dead_letter;
    if dead_letter.parquet.is_none() && dead_letter.kafka.is_none() {
        issues.add(
            "dead_letter",
            "expected `parquet`, `kafka` or both: bad records must go somewhere",
        );
    }
    if let Some(parquet) = &dead_letter.parquet {
        check_parquet(
            parquet,
            Some(&dead_letter::schema()),
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
            limits::count(out.max_payload_bytes.as_u64(), 0, MAX_RECORD_BYTES),
        );
    }

    match (
        issues.0.is_empty(),
        record_schema,
        row_schema,
        stage_schemas,
    ) {
        (true, Some(record_schema), Some(row_schema), Some(stage_schemas)) => Ok(Pipeline {
            config,
            record_schema,
            row_schema,
            stage_schemas,
            schema_path,
            plan_context,
            retrain: None,
            redactions: Default::default(),
            storage_retry: std::time::Duration::from_secs(300),
            disabled_sinks: Default::default(),
        }),
        _ => Err(issues.0),
    }
}

/// Builds every Kafka client configuration the way the run will, so a property librdkafka
/// rejects (a bad value, an unsupported SASL mechanism, a missing TLS file) fails here.
fn check_clients(config: &PipelineConfig, issues: &mut Issues) {
    let SourceConfig::Kafka(source) = &config.source;
    let group = source
        .group_id
        .clone()
        .unwrap_or_else(|| format!("sluice-{}", config.name));
    let mut clients = vec![(
        "source.kafka".to_owned(),
        crate::source::kafka::consumer_config(source, &group),
        false,
    )];
    let producer = |brokers: &Option<String>, properties| {
        let brokers = brokers.as_deref().unwrap_or(&source.brokers);
        client_config(brokers, PRODUCER_DEFAULTS, properties, &[])
    };
    for (i, sink) in config.sinks.iter().enumerate() {
        if let SinkConfig::Kafka(out) = sink {
            let client = producer(&out.brokers, &out.properties);
            clients.push((format!("sinks[{i}].kafka"), client, true));
        }
    }
    if let Some(out) = &config.dead_letter.kafka {
        let client = producer(&out.brokers, &out.properties);
        clients.push(("dead_letter.kafka".to_owned(), client, true));
    }
    let shared = config.kafka.as_ref().map(|k| &k.properties);
    // What the shared block gets wrong on its own is reported once, at `kafka.properties`.
    let shared_problems: std::collections::BTreeSet<String> = shared
        .map(|properties| {
            let alone = client_config(&source.brokers, &[], properties, &[]);
            check_config(&alone, false)
                .into_iter()
                .map(|p| p.message)
                .collect()
        })
        .unwrap_or_default();
    let mut reported = std::collections::BTreeSet::new();
    for (path, client, is_producer) in clients {
        for problem in check_config(&client, is_producer) {
            let from_shared = |property: &str| {
                let value = shared.and_then(|s| s.get(property))?.to_string();
                (client.get(property) == Some(value.as_str())).then_some(())
            };
            let key = match &problem.property {
                Some(property) if from_shared(property).is_some() => {
                    format!("kafka.properties.{property}")
                }
                Some(property) => format!("{path}.properties.{property}"),
                None if shared_problems.contains(&problem.message) => "kafka.properties".into(),
                None => format!("{path}.properties"),
            };
            if reported.insert((key.clone(), problem.message.clone())) {
                issues.add(key, format!("librdkafka: {}", problem.message));
            }
        }
    }
}

fn check_parquet(sink: &ParquetSinkConfig, rows: Option<&Schema>, path: &str, issues: &mut Issues) {
    let mut keys = Vec::new();
    for (j, spec) in sink.partition_by.iter().enumerate() {
        match PartitionKey::parse(spec) {
            Ok(key) => keys.push(key),
            Err(e) => issues.add(format!("{path}.partition_by[{j}]"), e),
        }
    }
    if let (Some(rows), true) = (rows, keys.len() == sink.partition_by.len()) {
        if let Err(e) = Partitioner::new(keys, rows) {
            issues.add(format!("{path}.partition_by"), e);
        }
    }
    if let Some(rows) = rows {
        for (j, column) in sink.columns.iter().flatten().enumerate() {
            if rows.column_with_name(column).is_none() {
                issues.add(format!("{path}.columns[{j}]"), unknown_column(column, rows));
            }
        }
    }
    let roll = &sink.roll;
    issues.check(
        format!("{path}.roll.max_rows"),
        limits::count(roll.max_rows, 1, 1_000_000_000),
    );
    if let Some(segment) = roll.segment_offsets {
        issues.check(
            format!("{path}.roll.segment_offsets"),
            limits::count(segment, 1, 1_000_000_000_000),
        );
    }
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
        format!("{path}.max_open_files"),
        limits::count(sink.max_open_files, 1, 10_000),
    );
    issues.check(
        format!("{path}.row_group_rows"),
        limits::count(sink.row_group_rows, 1, 16_000_000),
    );
}

fn check_kafka(sink: &KafkaSinkConfig, rows: Option<&Schema>, path: &str, issues: &mut Issues) {
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

//! Semantic checks of a parsed pipeline file, all reported together, producing the checked
//! [`Pipeline`].
//!
//! These are the mistakes serde cannot see: a schema file that is missing or wrong, a
//! partition key or output column that is not in the rows, a roll threshold of zero, a
//! pipeline with nowhere to put its dead letters.

use std::path::Path;
use std::time::Duration;

use super::Pipeline;
use crate::config::{limits, ConfigIssue, Issues, PipelineConfig, SinkConfig, SourceConfig};
use crate::kafka_client::{check_config, client_config};
use crate::model::Registry;
use crate::sink::plan::producer_config;
use crate::stage::{self, PlanContext};
use crate::{schema, sink};

/// The largest record a file may allow: 256 MiB.
const MAX_RECORD_BYTES: u64 = 256 << 20;

pub(super) fn validate(
    config: PipelineConfig,
    base_dir: &Path,
) -> Result<Pipeline, Vec<ConfigIssue>> {
    let mut issues = Issues(Vec::new());
    check_top_level(&config, &mut issues);
    check_clients(&config, &mut issues);

    let schema_path = base_dir.join(&config.decode.schema);
    let proto_file = schema_path.extension().is_some_and(|e| e == "proto");
    let (record_schema, avro_schema, proto_message) = if proto_file {
        match crate::proto::load(&schema_path, config.decode.message.as_deref()) {
            Ok((fields, message)) => (Some(fields), None, Some(message)),
            Err(e) => {
                issues.add("decode.schema", e);
                (None, None, None)
            }
        }
    } else {
        match schema::load(&schema_path) {
            Ok(record) => (Some(record.fields), record.avro, None),
            Err(e) => {
                issues.add("decode.schema", crate::telemetry::chain(&e));
                (None, None, None)
            }
        }
    };
    if record_schema.is_some() {
        let file = if proto_file {
            SchemaFile::Proto
        } else if avro_schema.is_some() {
            SchemaFile::Avro
        } else {
            SchemaFile::Sluice
        };
        check_format(&config, file, &mut issues);
    }
    let crate::config::SourceConfig::Kafka(source) = &config.source;
    if let Some(record) = &record_schema {
        check_headers(&source.headers, record, &mut issues);
    }
    let row_schema = record_schema
        .as_deref()
        .map(|record| schema::row_schema(record, &source.headers));
    let models = if crate::storage::is_url(&config.models.to_string_lossy()) {
        config.models.clone()
    } else {
        base_dir.join(&config.models)
    };
    let registry = match Registry::open(&models, &config.storage) {
        Ok(registry) => Some(registry),
        Err(e) => {
            issues.add("models", crate::telemetry::chain(&e));
            None
        }
    };
    let library = config
        .onnxruntime
        .library
        .as_ref()
        .map(|l| base_dir.join(l));
    let stages = match (&row_schema, &record_schema, registry) {
        (Some(rows), Some(record), Some(registry)) => {
            let shared = config
                .kafka
                .as_ref()
                .map(|k| k.properties.clone())
                .unwrap_or_default();
            let context = PlanContext {
                base_dir: base_dir.to_owned(),
                registry,
                storage: config.storage.clone(),
                producer: sink::plan::producer_config(&source_brokers(&config), &None, &shared),
                consumer: client_config(
                    &source_brokers(&config),
                    &[
                        ("group.id", &format!("sluice-{}-labels", config.name)),
                        ("enable.auto.commit", "false"),
                        ("enable.partition.eof", "false"),
                    ],
                    &shared,
                    &[],
                ),
            };
            let record_columns = record.fields().iter().map(|f| f.name().clone()).collect();
            match stage::Plan::new(&config.stages, rows, context, record_columns, library) {
                Ok(plan) => Some(plan),
                Err(stage_issues) => {
                    issues.0.extend(stage_issues);
                    None
                }
            }
        }
        _ => None,
    };
    // Sinks see the last stage's output; when the stages did not plan, skip column checks.
    let sink_rows = stages.as_ref().map(|plan| plan.output_schema().clone());
    let sinks = match sink::Plan::new(
        &config.sinks,
        &config.dead_letter,
        sink_rows.as_ref(),
        &source_brokers(&config),
        &config.storage,
        &config.name,
    ) {
        Ok(plan) => Some(plan),
        Err(sink_issues) => {
            issues.0.extend(sink_issues);
            None
        }
    };

    match (issues.0.is_empty(), record_schema, stages, sinks) {
        (true, Some(record_schema), Some(stages), Some(sinks)) => Ok(Pipeline {
            config,
            record_schema,
            schema_path,
            avro_schema,
            proto_message,
            stages,
            sinks,
            retrain: None,
            redactions: Default::default(),
            storage_retry: std::time::Duration::from_secs(300),
        }),
        _ => Err(issues.0),
    }
}

/// Header columns must be named, and name no other column.
fn check_headers(
    headers: &[crate::config::HeaderColumn],
    record: &arrow::datatypes::Schema,
    issues: &mut Issues,
) {
    let mut seen = std::collections::HashSet::new();
    for (i, header) in headers.iter().enumerate() {
        let column = header.column();
        let key = format!("source.kafka.headers[{i}]");
        if header.name().is_empty() || column.is_empty() {
            issues.add(key, "expected a header name");
        } else if record.field_with_name(column).is_ok() || schema::is_provenance(column) {
            issues.add(
                key,
                format!("column `{column}` exists already; give the header another `column`"),
            );
        } else if !seen.insert(column) {
            issues.add(key, format!("column `{column}` is named twice"));
        }
    }
}

/// The kind of file `decode.schema` names.
#[derive(Clone, Copy, PartialEq, Eq)]
enum SchemaFile {
    Sluice,
    Avro,
    Proto,
}

/// `decode.format` against the schema file's kind and the registry settings.
fn check_format(config: &crate::config::PipelineConfig, file: SchemaFile, issues: &mut Issues) {
    use crate::config::{OutputFormat, RecordFormat, SinkConfig};
    let decode = &config.decode;
    let avro_out = config
        .sinks
        .iter()
        .any(|sink| matches!(sink, SinkConfig::Kafka(out) if out.format != OutputFormat::Json));
    match (decode.format, file) {
        (RecordFormat::Avro, SchemaFile::Avro)
        | (RecordFormat::Protobuf, SchemaFile::Proto)
        | (RecordFormat::Json, SchemaFile::Sluice) => {}
        (RecordFormat::Avro, _) => issues.add(
            "decode.schema",
            "format: avro reads records into an Avro schema: expected a .avsc file",
        ),
        (RecordFormat::Protobuf, _) => issues.add(
            "decode.schema",
            "format: protobuf reads records as a message of a .proto file: expected a .proto file",
        ),
        (RecordFormat::Json, SchemaFile::Avro) => issues.add(
            "decode.schema",
            "a .avsc schema is for format: avro; JSON records take a sluice schema (schemas/README.md)",
        ),
        (RecordFormat::Json, SchemaFile::Proto) => issues.add(
            "decode.schema",
            "a .proto schema is for format: protobuf; JSON records take a sluice schema (schemas/README.md)",
        ),
    }
    if decode.message.is_some() && decode.format != RecordFormat::Protobuf {
        issues.add("decode.message", "only used with format: protobuf");
    }
    match (decode.format, &decode.schema_registry) {
        (format @ (RecordFormat::Avro | RecordFormat::Protobuf), None) => issues.add(
            "decode.schema_registry",
            format!(
                "format: {} needs the registry writer schemas come from: expected {{url: http://HOST:PORT}}",
                if format == RecordFormat::Avro { "avro" } else { "protobuf" }
            ),
        ),
        (RecordFormat::Json, Some(_)) if !avro_out => issues.add(
            "decode.schema_registry",
            "only used with format: avro or protobuf (here or on a kafka sink)",
        ),
        (_, Some(registry)) => {
            for (key, message) in registry.problems() {
                issues.add(format!("decode.schema_registry.{key}"), message);
            }
        }
        _ => {}
    }
}

/// The name, the metrics address, the source's and decode's settings, the schedule.
fn check_top_level(config: &PipelineConfig, issues: &mut Issues) {
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
}

/// Builds every Kafka client configuration the way the run will, so a property librdkafka
/// rejects (a bad value, an unsupported SASL mechanism, a missing TLS file) fails here.
fn check_clients(config: &PipelineConfig, issues: &mut Issues) {
    let SourceConfig::Kafka(source) = &config.source;
    let mut clients = vec![(
        "source.kafka".to_owned(),
        crate::source::settings::consumer_config(source, &config.group_id()),
        false,
    )];
    let producer = |brokers: &Option<String>, properties| {
        producer_config(&source.brokers, brokers, properties)
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

fn source_brokers(config: &PipelineConfig) -> String {
    let SourceConfig::Kafka(kafka) = &config.source;
    kafka.brokers.clone()
}

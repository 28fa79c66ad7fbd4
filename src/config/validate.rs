//! Semantic checks of a parsed pipeline file, all reported together, and the checked
//! [`Pipeline`] that the runtime builds from.
//!
//! These are the mistakes serde cannot see: a schema file that is missing or wrong, a
//! partition key or output column that is not in the rows, a roll threshold of zero, a
//! pipeline with nowhere to put its dead letters.

use std::path::{Path, PathBuf};

use arrow::datatypes::{Schema, SchemaRef};

use super::{
    ConfigIssue, KafkaSinkConfig, ParquetSinkConfig, PipelineConfig, SinkConfig, SourceConfig,
};
use crate::model::Registry;
use crate::sink::parquet::partition::{PartitionKey, Partitioner};
use crate::stage::{self, PlanContext};
use crate::{dead_letter, schema};

/// A pipeline file that parsed and passed every check.
#[derive(Debug, Clone)]
pub struct Pipeline {
    pub config: PipelineConfig,
    /// The record fields declared by `decode.schema`.
    pub record_schema: SchemaRef,
    /// Decoded rows: record fields plus provenance columns (what the first stage gets).
    pub row_schema: SchemaRef,
    /// Output schema of each stage, in order.
    pub stage_schemas: Vec<SchemaRef>,
    /// The schema file, resolved against the pipeline file's directory.
    pub schema_path: PathBuf,
    /// Paths the stages resolve (pipeline file directory, model registry).
    pub plan_context: PlanContext,
    /// The `retrain` section's job, loaded (set by the loader after these checks).
    pub retrain: Option<super::ScheduledRetrain>,
}

impl Pipeline {
    pub fn name(&self) -> &str {
        &self.config.name
    }

    /// Dataset roots of the Parquet sinks, in order (dead letters not counted).
    pub fn parquet_sinks(&self) -> impl Iterator<Item = &Path> {
        self.config.sinks.iter().filter_map(|s| match s {
            SinkConfig::Parquet(p) => Some(p.path.as_path()),
            SinkConfig::Kafka(_) => None,
        })
    }

    /// Roots of every Parquet dataset the pipeline writes: its sinks', then the
    /// dead-letter dataset.
    pub fn parquet_roots(&self) -> impl Iterator<Item = &Path> {
        let dead_letters = self.config.dead_letter.parquet.as_ref();
        self.parquet_sinks()
            .chain(dead_letters.map(|p| p.path.as_path()))
    }

    /// What the sinks receive: the last stage's output, or the decoded rows.
    pub fn output_schema(&self) -> &SchemaRef {
        self.stage_schemas.last().unwrap_or(&self.row_schema)
    }

    /// `onnxruntime.library`, resolved against the pipeline file's directory.
    pub fn onnxruntime_library(&self) -> Option<PathBuf> {
        self.config
            .onnxruntime
            .library
            .as_ref()
            .map(|l| self.plan_context.base_dir.join(l))
    }

    /// The consumer group: `source.kafka.group_id` or `sluice-<name>`.
    pub fn group_id(&self) -> String {
        let SourceConfig::Kafka(kafka) = &self.config.source;
        kafka
            .group_id
            .clone()
            .unwrap_or_else(|| format!("sluice-{}", self.config.name))
    }
}

struct Issues(Vec<ConfigIssue>);

impl Issues {
    fn add(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.0.push(ConfigIssue {
            path: path.into(),
            line: None,
            message: message.into(),
        });
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
    if kafka.batch.max_rows == 0 {
        issues.add("source.kafka.batch.max_rows", "expected a number above 0");
    }
    if kafka.properties.contains_key("enable.auto.offset.store") {
        issues.add(
            "source.kafka.properties.enable.auto.offset.store",
            "sluice stores offsets itself, only after every sink made a batch durable; remove this key",
        );
    }

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
        }),
        _ => Err(issues.0),
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
    if sink.roll.max_rows == 0 {
        issues.add(format!("{path}.roll.max_rows"), "expected a number above 0");
    }
    if sink.roll.segment_offsets == Some(0) {
        issues.add(
            format!("{path}.roll.segment_offsets"),
            "expected a number above 0",
        );
    }
    if sink.roll.max_bytes.as_u64() == 0 {
        issues.add(format!("{path}.roll.max_bytes"), "expected a size above 0");
    }
    if sink.roll.max_age.is_zero() {
        issues.add(
            format!("{path}.roll.max_age"),
            "expected a duration above 0",
        );
    }
    if sink.max_open_files == 0 {
        issues.add(
            format!("{path}.max_open_files"),
            "expected a number above 0",
        );
    }
    if sink.row_group_rows == 0 {
        issues.add(
            format!("{path}.row_group_rows"),
            "expected a number above 0",
        );
    }
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

//! A pipeline file or retrain job, loaded and checked into the plan the runtime builds
//! from: [`load`] reads and parses the file (`config`), [`validate`] makes the checks serde
//! cannot (schemas, stage plans, sink plans, librdkafka settings), [`job`] loads retrain
//! jobs, [`schedule`] says when they run.
//!
//! Relative paths: what defines the pipeline (`decode.schema`, `models`, tokenizer and
//! lookup files, `onnxruntime.library`) is relative to the pipeline file; output paths are
//! relative to the working directory.

pub mod job;
pub mod schedule;
mod validate;

use std::path::{Path, PathBuf};

use arrow::datatypes::SchemaRef;

use crate::config::{
    parse_sections, ConfigError, ConfigIssue, ParquetSinkConfig, PipelineConfig, SinkConfig,
    SourceConfig, YamlFile, PIPELINE_KEYS,
};
use crate::stage::PlanContext;

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
    pub retrain: Option<ScheduledRetrain>,
    /// Values from the environment (shown as `${NAME}`) and credentials: the binary hides
    /// the secrets among them in everything it prints.
    pub redactions: crate::config::Redactions,
    /// How long a run keeps retrying while its storage is full (`--storage-retry`; see
    /// `runtime`). Default: 5 minutes.
    pub storage_retry: std::time::Duration,
    /// Outputs this run leaves out (`sinks[1].kafka`, `dead_letter.kafka`): `sluice
    /// backfill --sinks` writes only some of them.
    pub disabled_sinks: std::collections::BTreeSet<String>,
}

impl Pipeline {
    pub fn name(&self) -> &str {
        &self.config.name
    }

    /// The sinks this run writes, with their names (`sinks[0].parquet`), in order.
    pub fn sinks(&self) -> impl Iterator<Item = (String, &SinkConfig)> {
        self.config
            .sinks
            .iter()
            .enumerate()
            .map(|(i, sink)| (format!("sinks[{i}].{}", sink.kind()), sink))
            .filter(|(name, _)| !self.disabled_sinks.contains(name))
    }

    /// The dead-letter Parquet dataset, if this run writes one.
    pub fn dead_letter_parquet(&self) -> Option<&ParquetSinkConfig> {
        self.config
            .dead_letter
            .parquet
            .as_ref()
            .filter(|_| !self.disabled_sinks.contains("dead_letter.parquet"))
    }

    /// The dead-letter topic, if this run writes one.
    pub fn dead_letter_kafka(&self) -> Option<&crate::config::DeadLetterKafkaConfig> {
        self.config
            .dead_letter
            .kafka
            .as_ref()
            .filter(|_| !self.disabled_sinks.contains("dead_letter.kafka"))
    }

    /// Dataset roots of the Parquet sinks, in order (dead letters not counted).
    pub fn parquet_sinks(&self) -> impl Iterator<Item = &Path> {
        self.sinks().filter_map(|(_, s)| match s {
            SinkConfig::Parquet(p) => Some(p.path.as_path()),
            SinkConfig::Kafka(_) => None,
        })
    }

    /// Roots of every Parquet dataset the pipeline writes: its sinks', then the
    /// dead-letter dataset.
    pub fn parquet_roots(&self) -> impl Iterator<Item = &Path> {
        let dead_letters = self.dead_letter_parquet();
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
        (Some(every), None) => schedule::Schedule::Every(*every),
        (None, Some(cron)) => {
            schedule::Schedule::cron(cron).map_err(|e| issue("retrain.cron", e))?
        }
        _ => {
            return Err(issue(
                "retrain",
                "expected exactly one of `every` and `cron`".into(),
            ))
        }
    };
    let job_file = pipeline.plan_context.base_dir.join(&retrain.job);
    let job = job::load(&job_file, lookup).map_err(|e| issue("retrain.job", e.to_string()))?;
    Ok(Some(ScheduledRetrain { job, schedule }))
}

/// A retrain job that `sluice run` executes on its schedule.
#[derive(Debug, Clone)]
pub struct ScheduledRetrain {
    pub job: job::LoadedJob,
    pub schedule: schedule::Schedule,
}

//! A pipeline file or retrain job, loaded and checked into the plan the runtime builds
//! from: [`load`] reads and parses the file (`config`), `validate` makes the checks serde
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
    parse_sections, ConfigError, ConfigIssue, PipelineConfig, YamlFile, PIPELINE_KEYS,
};
use crate::{sink, stage};

/// A pipeline file that parsed and passed every check: what a run is built from.
#[derive(Debug, Clone)]
pub struct Pipeline {
    /// The file as parsed (every Kafka client's `properties` include the shared
    /// `kafka.properties`).
    pub config: PipelineConfig,
    /// The record fields declared by `decode.schema`.
    pub record_schema: SchemaRef,
    /// The schema file, resolved against the pipeline file's directory.
    pub schema_path: PathBuf,
    /// For `decode.format: avro`, the schema file's Avro JSON (the reader schema).
    pub avro_schema: Option<String>,
    /// For `decode.format: protobuf`, the `.proto` file's reader message.
    pub proto_message: Option<prost_reflect::MessageDescriptor>,
    /// The stages, planned (`stage::Chain::build` builds them from this).
    pub stages: stage::Plan,
    /// The outputs, planned (`sink::build` builds them from this).
    pub sinks: sink::Plan,
    /// The `retrain` section's job, loaded, and its schedule.
    pub retrain: Option<ScheduledRetrain>,
    /// Values from the environment (shown as `${NAME}`) and credentials: the binary hides
    /// the secrets among them in everything it prints.
    pub redactions: crate::config::Redactions,
    /// How long a run keeps retrying while its storage is full (`--storage-retry`; see
    /// `runtime`). Default: 5 minutes.
    pub storage_retry: std::time::Duration,
}

impl Pipeline {
    pub fn name(&self) -> &str {
        &self.config.name
    }

    /// Decoded rows: record fields plus provenance columns (what the first stage gets).
    pub fn row_schema(&self) -> &SchemaRef {
        &self.stages.input
    }

    /// What the sinks receive: the last stage's output, or the decoded rows.
    pub fn output_schema(&self) -> &SchemaRef {
        self.stages.output_schema()
    }

    /// The consumer group: `source.kafka.group_id` or `sluice-<name>`.
    pub fn group_id(&self) -> String {
        self.config.group_id()
    }
}

/// Environment variables holding object-store credentials (read by the `object_store`
/// clients directly): hidden like the file's secrets.
const STORAGE_SECRET_VARS: &[&str] = &[
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AZURE_STORAGE_ACCOUNT_KEY",
    "AZURE_STORAGE_ACCESS_KEY",
    "AZURE_CLIENT_SECRET",
    "AZURE_STORAGE_SAS_KEY",
    "GOOGLE_SERVICE_ACCOUNT_KEY",
];

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
    config.share_schema_registry();
    let mut redactions = yaml.redactions.clone();
    for (property, value) in config.credentials() {
        redactions.add_secret(value, format!("[{property}]"));
    }
    // Object-store credentials the clients read from the environment themselves.
    for name in STORAGE_SECRET_VARS {
        if let Some(value) = lookup(name) {
            redactions.add_secret(&value, format!("${{{name}}}"));
        }
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
        (None, Some(cron)) => schedule::Schedule::cron(cron)
            .map_err(|e| issue("retrain.cron", crate::telemetry::chain(&e)))?,
        _ => {
            return Err(issue(
                "retrain",
                "expected exactly one of `every` and `cron`".into(),
            ))
        }
    };
    let job_file = pipeline.stages.context.base_dir.join(&retrain.job);
    let job = job::load(&job_file, lookup).map_err(|e| issue("retrain.job", e.to_string()))?;
    Ok(Some(ScheduledRetrain {
        job,
        schedule,
        on_drift: retrain.on_drift.then_some(retrain.min_interval),
    }))
}

/// A retrain job that `sluice run` executes on its schedule.
#[derive(Debug, Clone)]
pub struct ScheduledRetrain {
    pub job: job::LoadedJob,
    pub schedule: schedule::Schedule,
    /// Also run when drift is raised, at most once per this interval.
    pub on_drift: Option<std::time::Duration>,
}

//! Planning the stages at load time: each stage's output schema from its config, its
//! input schema and the models' manifests, so `validate` finds an unknown column, an
//! unmapped model input or a column type that cannot feed a model without loading a
//! model. The result, [`Plan`], is what [`super::Chain::build`] builds from.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use arrow::datatypes::{Schema, SchemaRef};

use super::{enrich, infer, sql, tokenize, window};
use crate::config::{limits, ConfigIssue, StageConfig};
use crate::model::Registry;

/// The checked stages of a pipeline.
#[derive(Debug, Clone)]
pub struct Plan {
    pub configs: Vec<StageConfig>,
    /// What the first stage gets: decoded rows (record fields and provenance columns).
    pub input: SchemaRef,
    /// Each stage's output schema, in order.
    pub outputs: Vec<SchemaRef>,
    pub context: PlanContext,
    /// The record's own fields: a rejected row's dead-letter payload.
    pub record_columns: Vec<String>,
    /// `onnxruntime.library`, resolved.
    pub onnxruntime_library: Option<PathBuf>,
}

impl Plan {
    /// Plans `configs` over rows of `input`; every problem at once.
    pub fn new(
        configs: &[StageConfig],
        input: &SchemaRef,
        context: PlanContext,
        record_columns: Vec<String>,
        onnxruntime_library: Option<PathBuf>,
    ) -> Result<Plan, Vec<ConfigIssue>> {
        let outputs = plan(configs, input, &context)?;
        Ok(Plan {
            configs: configs.to_vec(),
            input: input.clone(),
            outputs,
            context,
            record_columns,
            onnxruntime_library,
        })
    }

    /// What the sinks receive: the last stage's output, or the decoded rows.
    pub fn output_schema(&self) -> &SchemaRef {
        self.outputs.last().unwrap_or(&self.input)
    }
}

/// What stage planning needs: where relative paths start and the model registry.
#[derive(Debug, Clone)]
pub struct PlanContext {
    pub base_dir: PathBuf,
    pub registry: Registry,
    /// The pipeline's `storage:` blocks, for files named by URL (lookup tables).
    pub storage: std::collections::BTreeMap<String, crate::config::StorageConfig>,
    /// A producer's configuration for a stage's own events (`infer.drift.topic`): the
    /// source's brokers and the shared `kafka.properties`.
    pub producer: rdkafka::ClientConfig,
    /// A consumer's configuration for a stage's own reads (`infer.accuracy.labels`): the
    /// source's brokers and the shared `kafka.properties`, no group commits.
    pub consumer: rdkafka::ClientConfig,
}

/// Problems found while planning one stage, with key paths relative to the stage.
pub struct PlanIssues {
    prefix: String,
    pub issues: Vec<ConfigIssue>,
}

impl PlanIssues {
    pub(super) fn new(prefix: String) -> Self {
        PlanIssues {
            prefix,
            issues: Vec::new(),
        }
    }

    pub(crate) fn add(&mut self, key: &str, message: impl Into<String>) {
        let path = if key.is_empty() {
            self.prefix.clone()
        } else {
            format!("{}.{key}", self.prefix)
        };
        self.issues.push(ConfigIssue {
            path,
            line: None,
            message: message.into(),
        });
    }

    /// Refuses a duration outside `min..=max` (see `config::limits`).
    pub(crate) fn duration(&mut self, key: &str, value: Duration, min: Duration, max: Duration) {
        if let Err(out_of_range) = limits::duration(value, min, max) {
            self.add(key, out_of_range.to_string());
        }
    }

    /// Refuses a count outside `min..=max`.
    pub(crate) fn count(&mut self, key: &str, value: usize, min: usize, max: usize) {
        if let Err(out_of_range) = limits::count(value, min, max) {
            self.add(key, out_of_range.to_string());
        }
    }

    pub(crate) fn unknown_column(&mut self, key: &str, column: &str, schema: &Schema) {
        let names: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
        self.add(
            key,
            format!(
                "unknown column `{column}`, expected one of: {}",
                names.join(", ")
            ),
        );
    }
}

/// Output schema of every stage in order (the last is what sinks receive), or every
/// problem found.
pub fn plan(
    stages: &[StageConfig],
    input: &SchemaRef,
    ctx: &PlanContext,
) -> Result<Vec<SchemaRef>, Vec<ConfigIssue>> {
    let mut schemas = Vec::with_capacity(stages.len());
    let mut current = input.clone();
    let mut all = Vec::new();
    for (i, stage) in stages.iter().enumerate() {
        let mut issues = PlanIssues::new(format!("stages[{i}].{}", stage.kind()));
        let schema = match stage {
            StageConfig::Window(config) => window::output_schema(config, &current, &mut issues),
            StageConfig::Tokenize(config) => {
                if let Err(e) = tokenize::tokenizer_path(config, ctx) {
                    issues.add("tokenizer", crate::telemetry::chain(&e));
                }
                tokenize::output_schema(config, &current, &mut issues)
            }
            StageConfig::Infer(config) => infer::output_schema(config, &current, ctx, &mut issues),
            StageConfig::Enrich(config) => {
                enrich::output_schema(config, &current, ctx, &mut issues)
            }
            StageConfig::Sql(config) => sql::output_schema(config, &current, &mut issues),
        };
        let failed = !issues.issues.is_empty();
        all.extend(issues.issues);
        if failed {
            // Later stages would only report consequences of this one.
            return Err(all);
        }
        current = Arc::new(schema);
        schemas.push(current.clone());
    }
    Ok(schemas)
}

//! Stages: what happens to decoded rows between decode and the sinks.
//!
//! A stage takes a `RecordBatch` and returns one with the same rows (plus or minus
//! columns), and may reject rows with a reason; `window` instead returns one row per
//! window that closed (an aggregating stage). Stages never see offsets: the [`Chain`]
//! carries provenance beside the data, turns rejected rows into dead letters (from the
//! row's `_topic/_partition/_offset/_timestamp` columns, with the row as JSON for payload)
//! and drops them before the next stage.
//!
//! Stateful stages (`window`) must see a partition's batches in offset order, so the chain
//! is run in two parts: [`Chain::process_ordered`] (every stage up to the last stateful
//! one: a partition's batches one at a time, in source order; different partitions at
//! once) and [`Chain::process_rest`] (the others, several batches at once). A stateful
//! stage also says how far back a restart must re-read to rebuild its state; the batch
//! carries that as `retain_from`, and offsets are never committed past it.
//!
//! Every stage's output schema is computed from its input schema and its config by
//! [`plan`], at load time (`sluice validate` included), so a pipeline whose stages do not
//! fit together fails before it touches Kafka.
//!
//! Stages take `&self` and keep their state behind their own locks, so the runtime can
//! have several batches in flight through the chain at once: that is what lets `infer`
//! merge rows of different micro-batches into one model run (dynamic batching).

pub mod enrich;
pub mod infer;
pub mod plan;
pub mod sql;
pub mod tokenize;
pub mod window;

pub use plan::{plan, Plan, PlanContext, PlanIssues};

use std::sync::Arc;

use arrow::array::{Array, AsArray, BooleanArray, RecordBatch};
use arrow::compute::filter_record_batch;
use arrow::datatypes::{Int64Type, SchemaRef, TimestampMillisecondType};
use arrow::error::ArrowError;

use crate::batch::{Batch, DeadLetter, DeadLetterKind, TopicPartition};
use crate::config::StageConfig;
use crate::telemetry::Stats;

#[derive(Debug, thiserror::Error)]
pub enum StageError {
    #[error("stage {stage}: {message}")]
    Setup { stage: String, message: String },
    #[error("stage {stage}: reading the model registry")]
    ModelVersion {
        stage: String,
        #[source]
        source: crate::model::RegistryError,
    },
    #[error("stage {stage}: finding the tokenizer")]
    Tokenizer {
        stage: String,
        #[source]
        source: tokenize::TokenizerError,
    },
    #[error("stage {stage}: {message}")]
    Failed { stage: String, message: String },
    #[error("stage {stage}: a model input")]
    Input {
        stage: String,
        #[source]
        source: infer::tensors::TensorError,
    },
    #[error(transparent)]
    Model(#[from] crate::model::ModelError),
    #[error(transparent)]
    Registry(#[from] crate::model::RegistryError),
    #[error("Arrow error in a stage (a bug, not bad input): {0}")]
    Arrow(#[from] ArrowError),
    #[error("a stage's blocking task failed")]
    Task(#[from] tokio::task::JoinError),
    #[error("stage {stage}: column `{column}` is missing at run time (a bug: the plan has it)")]
    MissingColumn { stage: String, column: String },
}

/// A row a stage could not process, and why.
#[derive(Debug, Clone, PartialEq)]
pub struct Rejection {
    pub row: usize,
    pub kind: DeadLetterKind,
    pub reason: String,
}

impl Rejection {
    pub fn new(row: usize, kind: DeadLetterKind, reason: impl Into<String>) -> Self {
        Rejection {
            row,
            kind,
            reason: reason.into(),
        }
    }
}

/// What a stage returns: one output row per input row (or per closed window when
/// `aggregated`), and the input rows to reject.
#[derive(Debug)]
pub struct StageOutput {
    pub rows: RecordBatch,
    pub rejected: Vec<Rejection>,
    /// The rows are new rows (not one per input row); rejected rows are not among them.
    pub aggregated: bool,
}

/// One running stage.
pub enum Stage {
    Window(window::WindowStage),
    Tokenize(tokenize::TokenizeStage),
    Infer(Box<infer::InferStage>),
    Enrich(enrich::EnrichStage),
    Sql(sql::SqlStage),
}

impl Stage {
    pub fn name(&self) -> &str {
        match self {
            Stage::Window(s) => s.name(),
            Stage::Tokenize(s) => s.name(),
            Stage::Infer(s) => s.name(),
            Stage::Enrich(s) => s.name(),
            Stage::Sql(s) => s.name(),
        }
    }

    pub async fn process(&self, rows: RecordBatch) -> Result<StageOutput, StageError> {
        match self {
            Stage::Window(s) => s.process(rows).await,
            Stage::Tokenize(s) => s.process(rows).await,
            Stage::Infer(s) => s.process(rows).await,
            Stage::Enrich(s) => s.process(rows).await,
            Stage::Sql(s) => s.process(rows).await,
        }
    }
}

/// The stages of a pipeline, built from its config.
pub struct Chain {
    stages: Vec<Stage>,
    /// Stages `..ordered` run one batch at a time in source order (they end with the last
    /// stateful stage).
    ordered: usize,
    /// What the sinks expect (the last stage's output schema).
    output_schema: SchemaRef,
    /// Columns written as a rejected row's payload (the decoded record's fields).
    record_columns: Vec<String>,
    stats: Arc<Stats>,
}

impl Chain {
    /// Builds every stage: loads tokenizers, opens and warms up model sessions, reads
    /// lookup tables. Slow (seconds), so it runs before the source subscribes.
    pub async fn build(plan: &Plan) -> Result<Chain, StageError> {
        Chain::build_counted(plan, Arc::default()).await
    }

    /// [`Chain::build`], counting rows, time and model runs per stage into `stats`.
    pub async fn build_counted(plan: &Plan, stats: Arc<Stats>) -> Result<Chain, StageError> {
        let configs = &plan.configs;
        let ctx = &plan.context;
        let library = plan.onnxruntime_library.clone();
        let mut stages = Vec::with_capacity(configs.len());
        let mut input = plan.input.clone();
        for (i, (config, output)) in configs.iter().zip(&plan.outputs).enumerate() {
            let name = format!("stages[{i}].{}", config.kind());
            let stage = match config {
                StageConfig::Window(config) => {
                    Stage::Window(window::WindowStage::new(name, config, output.clone()))
                }
                StageConfig::Tokenize(config) => {
                    let file = tokenize::tokenizer_path(config, ctx).map_err(|source| {
                        StageError::Tokenizer {
                            stage: name.clone(),
                            source,
                        }
                    })?;
                    Stage::Tokenize(tokenize::TokenizeStage::new(
                        name,
                        config,
                        &file,
                        &input,
                        output.clone(),
                    )?)
                }
                StageConfig::Infer(config) => Stage::Infer(Box::new(
                    infer::InferStage::start(
                        name,
                        config,
                        ctx,
                        library.as_deref(),
                        &input,
                        output.clone(),
                        &stats,
                    )
                    .await?,
                )),
                StageConfig::Sql(config) => {
                    Stage::Sql(sql::SqlStage::new(name, config, output.clone()))
                }
                StageConfig::Enrich(config) => Stage::Enrich(
                    enrich::EnrichStage::start(name, config, ctx, &input, output.clone()).await?,
                ),
            };
            stages.push(stage);
            input = output.clone();
        }
        let ordered = stages
            .iter()
            .rposition(|s| matches!(s, Stage::Window(_)))
            .map_or(0, |i| i + 1);
        Ok(Chain {
            stages,
            ordered,
            output_schema: input,
            record_columns: plan.record_columns.clone(),
            stats,
        })
    }

    pub fn is_empty(&self) -> bool {
        self.stages.is_empty()
    }

    /// Whether any stage keeps state across batches ([`Chain::process_ordered`] has work).
    pub fn has_stateful_stages(&self) -> bool {
        self.ordered > 0
    }

    /// `STAGE=DEVICE` for each infer stage (`stages[1].infer=cuda:0`).
    pub fn inference_devices(&self) -> Vec<String> {
        self.stages
            .iter()
            .filter_map(|s| match s {
                Stage::Infer(infer) => Some(format!("{}={}", infer.name(), infer.placement())),
                _ => None,
            })
            .collect()
    }

    /// Runs `batch` through every stage; rejected rows become dead letters. A batch left
    /// without rows (all dead letters) still leaves with the output schema.
    pub async fn process(&self, batch: Batch) -> Result<Batch, StageError> {
        let batch = self.process_ordered(batch).await?;
        self.process_rest(batch).await
    }

    /// The stages up to the last stateful one. Call it for one batch of a partition at a
    /// time, in the order the source sent them; batches of different partitions may run
    /// at once. A revoke must not overlap a batch of the partitions it names.
    pub async fn process_ordered(&self, batch: Batch) -> Result<Batch, StageError> {
        let mut batch = self.run_stages(batch, 0..self.ordered).await?;
        batch.retain_from = self
            .stages
            .iter()
            .filter_map(|s| match s {
                Stage::Window(w) => w.retain_from(&batch.provenance.tp),
                _ => None,
            })
            .min();
        Ok(batch)
    }

    /// The stages after the last stateful one; any number of batches at once.
    pub async fn process_rest(&self, batch: Batch) -> Result<Batch, StageError> {
        let mut batch = self
            .run_stages(batch, self.ordered..self.stages.len())
            .await?;
        batch.dead_letters.sort_by_key(|d| d.offset);
        Ok(batch)
    }

    /// The partitions were revoked (or the pipeline stops): stateful stages drop what they
    /// hold for them, the next owner rebuilds it from the committed offsets.
    pub fn revoke(&self, partitions: Option<&[TopicPartition]>) {
        for stage in &self.stages {
            if let Stage::Window(w) = stage {
                w.revoke(partitions);
            }
        }
    }

    async fn run_stages(
        &self,
        mut batch: Batch,
        range: std::ops::Range<usize>,
    ) -> Result<Batch, StageError> {
        let last = range.end == self.stages.len();
        for stage in &self.stages[range] {
            if batch.rows.num_rows() == 0 {
                break;
            }
            let input = batch.rows;
            let started = std::time::Instant::now();
            let output = stage.process(input.clone()).await?;
            self.stats.record_stage(
                stage.name(),
                input.num_rows(),
                output.rows.num_rows()
                    - if output.aggregated {
                        0
                    } else {
                        output.rejected.len()
                    },
                started.elapsed(),
            );
            batch.rows = if output.rejected.is_empty() || output.aggregated {
                if !output.rejected.is_empty() {
                    batch.dead_letters.extend(self.dead_letters(
                        stage.name(),
                        &batch.provenance.tp,
                        &input,
                        &output.rejected,
                    )?);
                }
                output.rows
            } else {
                let mut keep = vec![true; input.num_rows()];
                for rejection in &output.rejected {
                    keep[rejection.row] = false;
                }
                batch.dead_letters.extend(self.dead_letters(
                    stage.name(),
                    &batch.provenance.tp,
                    &input,
                    &output.rejected,
                )?);
                filter_record_batch(&output.rows, &BooleanArray::from(keep))?
            };
        }
        if last && batch.rows.num_rows() == 0 {
            batch.rows = RecordBatch::new_empty(self.output_schema.clone());
        }
        Ok(batch)
    }

    fn dead_letters(
        &self,
        stage: &str,
        tp: &TopicPartition,
        rows: &RecordBatch,
        rejected: &[Rejection],
    ) -> Result<Vec<DeadLetter>, ArrowError> {
        let column = |name: &str| {
            rows.column_by_name(name).ok_or_else(|| {
                ArrowError::SchemaError(format!("provenance column `{name}` missing"))
            })
        };
        let offsets = column(crate::schema::OFFSET_COLUMN)?;
        let offsets = offsets.as_primitive::<Int64Type>();
        let timestamps = column(crate::schema::TIMESTAMP_COLUMN)?;
        let timestamps = timestamps.as_primitive::<TimestampMillisecondType>();
        let record_indices: Vec<usize> = self
            .record_columns
            .iter()
            .filter_map(|name| rows.schema().index_of(name).ok())
            .collect();
        let record = rows.project(&record_indices)?;
        let failed_at = chrono::Utc::now().timestamp_millis();
        rejected
            .iter()
            .map(|rejection| {
                let mut writer = arrow::json::LineDelimitedWriter::new(Vec::new());
                writer.write(&record.slice(rejection.row, 1))?;
                writer.finish()?;
                let mut payload = writer.into_inner();
                if payload.last() == Some(&b'\n') {
                    payload.pop();
                }
                Ok(DeadLetter {
                    kind: rejection.kind,
                    reason: rejection.reason.clone(),
                    stage: stage.to_owned(),
                    tp: tp.clone(),
                    offset: offsets.value(rejection.row),
                    timestamp: timestamps
                        .is_valid(rejection.row)
                        .then(|| timestamps.value(rejection.row)),
                    failed_at,
                    key: None,
                    payload: Some(payload),
                })
            })
            .collect()
    }
}

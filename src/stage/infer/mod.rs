//! `infer`: run an ONNX model from the registry over columns of the rows.
//!
//! Model inputs are mapped from columns and outputs to new columns, by name, in the
//! pipeline file; every row also gets the `NAME/VERSION` of the model that produced it.
//! The model runs on worker threads ([`worker`]) with dynamic batching, never on the
//! async runtime's threads, so Kafka polling and the sinks keep going during inference.
//! The serving version is hot-swapped when the registry's pointer moves ([`serving`]).
//! Planned at load time by [`plan`]; watched by [`drift`] and [`live`] (accuracy from
//! delayed labels); canary and shadow versions run in [`lanes`].

pub mod drift;
mod join;
mod lanes;
mod live;
mod plan;
pub mod serving;
pub mod tensors;
mod topic_rows;
pub mod worker;

use crate::telemetry::Stats;
use std::path::Path;
use std::sync::{mpsc, Arc, Mutex};

use arrow::array::{ArrayRef, RecordBatch};
use arrow::datatypes::{Schema, SchemaRef};
use tokio::sync::oneshot;

use self::lanes::{Canary, LaneReply, Shadow};
pub use self::plan::output_schema;
use self::plan::{current_manifest, input_plans, output_specs};
use self::serving::{Contract, Serving, Watcher};
use self::tensors::{input_matrix, Elem, OutputSpec};
use self::worker::{Batching, Request};
use super::{PlanContext, PlanIssues, StageError, StageOutput};
use crate::config::InferConfig;
use crate::model::{DevicePlan, Placement};

pub struct InferStage {
    name: String,
    requests: mpsc::Sender<Request>,
    /// Per model input (in the workers' order): the columns that feed it.
    input_columns: Vec<Vec<usize>>,
    input_elems: Vec<Elem>,
    outputs: Vec<OutputSpec>,
    drop: Vec<usize>,
    output_schema: SchemaRef,
    placement: Placement,
    drift: drift::DriftMonitor,
    /// Which output is `probabilities` (what drift reads), if any.
    probabilities: Option<usize>,
    /// A share of the rows served by another version, on its own workers.
    canary: Option<Canary>,
    /// A sample of the rows also run through another version, beside the served columns.
    shadow: Option<Shadow>,
    /// Predictions joined to delayed labels (`accuracy`).
    live: Option<live::LiveAccuracy>,
    model: String,
    stats: Arc<Stats>,
    _stop_watcher: mpsc::Sender<()>,
}

impl InferStage {
    /// Loads ONNX Runtime, decides the device, opens and warms up the current version,
    /// and starts the workers and the registry watcher.
    ///
    /// Long on purpose: checks the serving contract, starts the workers and the registry
    /// watcher; each part needs the previous one.
    /// `ctx`: the registry models come from, and the producer settings for drift events.
    pub async fn start(
        name: String,
        config: &InferConfig,
        ctx: &PlanContext,
        library: Option<&Path>,
        input: &Schema,
        output_schema: SchemaRef,
        stats: &Arc<Stats>,
    ) -> Result<InferStage, StageError> {
        let (registry, producer) = (&ctx.registry, &ctx.producer);
        let setup = |message: String| StageError::Setup {
            stage: name.clone(),
            message,
        };
        let manifest =
            current_manifest(config, registry).map_err(|source| StageError::ModelVersion {
                stage: name.clone(),
                source,
            })?;
        let mut issues = PlanIssues::new(name.clone());
        let plans = input_plans(config, &manifest, &mut issues);
        let outputs = output_specs(config, &manifest, &mut issues);
        if let Some(issue) = issues.issues.first() {
            return Err(setup(issue.message.clone()));
        }
        let input_columns = plans
            .iter()
            .map(|p| {
                config.inputs[&p.name]
                    .names()
                    .iter()
                    .map(|n| input.index_of(n))
                    .collect::<Result<Vec<_>, _>>()
            })
            .collect::<Result<Vec<_>, _>>()?;
        let drop = if config.drop_inputs {
            input_columns.iter().flatten().copied().collect()
        } else {
            Vec::new()
        };
        let contract = Contract {
            inputs: plans.iter().map(|p| (p.name.clone(), p.elem)).collect(),
            outputs: outputs.clone(),
        };
        let version = registry.current(&config.model)?;
        let cpu_version = match &config.cpu_model {
            Some(cpu_model) => Some(registry.current(cpu_model)?),
            None => None,
        };
        let (device, device_id, threads, spinning, workers) = (
            config.device,
            config.device_id,
            config.intra_threads,
            config.intra_spinning,
            config.workers,
        );
        let library = library.map(Path::to_owned);
        let stage = name.clone();
        let startup_contract = contract.clone();
        let (plan, model, version) =
            tokio::task::spawn_blocking(move || -> Result<_, StageError> {
                let mut plan = DevicePlan::resolve(
                    device,
                    device_id,
                    threads,
                    library.as_deref(),
                    &version.model_path(),
                    &stage,
                )?;
                plan.intra_spinning = spinning;
                // On the CPU, the CPU variant (`cpu_model`) serves instead.
                let version = match cpu_version {
                    Some(cpu) if matches!(plan.placement, Placement::Cpu) => cpu,
                    _ => version,
                };
                let model = serving::load(&plan, &version, workers, &startup_contract)?;
                Ok((plan, model, version))
            })
            .await
            .map_err(StageError::Task)??;
        // The model served: `model`, or `cpu_model` on the CPU.
        let model_name = version.name.clone();
        let serving_version = version.version.clone();
        tracing::info!(stage = %name, model = %model.label, device = %plan.placement, workers, "model loaded");
        let placement = plan.placement;
        let serving = Arc::new(Serving::new(model));
        stats.record_model_serving(&name, &model_name, &serving_version);

        let batching = Arc::new(Batching {
            stage: name.clone(),
            input_names: plans.iter().map(|p| p.name.clone()).collect(),
            sequence_inputs: plans.iter().map(|p| p.sequence).collect(),
            length_input: config
                .sort_by_length_of
                .as_ref()
                .and_then(|l| plans.iter().position(|p| &p.name == l)),
            outputs: outputs.clone(),
            max_batch: config.max_batch,
            max_wait: config.max_wait,
            metrics: stats.inference(&name),
        });
        let (requests, queue) = mpsc::channel();
        let queue = Arc::new(Mutex::new(queue));
        for index in 0..config.workers {
            let (batching, serving, queue) = (batching.clone(), serving.clone(), queue.clone());
            std::thread::Builder::new()
                .name(format!("sluice-infer-{index}"))
                .spawn(move || worker::run(index, batching, serving, queue))
                .map_err(|e| setup(format!("cannot start a worker thread: {e}")))?;
        }
        let drift = drift::DriftMonitor::new(
            name.clone(),
            model_name.clone(),
            config.drift.clone(),
            producer,
            registry.clone(),
            stats.clone(),
            input_columns.first().cloned().unwrap_or_default(),
        )
        .map_err(|e| setup(format!("drift.topic: cannot create the producer: {e}")))?;
        let probabilities = outputs.iter().position(|o| o.output == "probabilities");
        let live = match &config.accuracy {
            Some(accuracy) => Some(
                live::LiveAccuracy::start(
                    name.clone(),
                    model_name.clone(),
                    manifest.labels.clone().unwrap_or_default(),
                    accuracy.clone(),
                    input.index_of(&accuracy.id)?,
                    &ctx.consumer,
                    producer,
                    stats.clone(),
                )
                .map_err(|e| setup(format!("accuracy: cannot create its Kafka clients: {e}")))?,
            ),
            None => None,
        };
        // Another published version on its own workers (canary, shadow).
        let lane = |kind: &'static str, version: &str| {
            let version = registry.version(&config.model, version);
            let (plan, contract, workers) = (plan.clone(), contract.clone(), config.workers);
            let (batching, name) = (batching.clone(), name.clone());
            async move {
                registry.manifest(&version)?;
                let model = tokio::task::spawn_blocking(move || {
                    serving::load(&plan, &version, workers, &contract)
                })
                .await
                .map_err(StageError::Task)??;
                tracing::info!(stage = %name, model = %model.label, lane = kind, "model version loaded");
                let serving = Arc::new(Serving::new(model));
                let (requests, queue) = mpsc::channel();
                let queue = Arc::new(Mutex::new(queue));
                for index in 0..workers {
                    let (batching, serving, queue) =
                        (batching.clone(), serving.clone(), queue.clone());
                    std::thread::Builder::new()
                        .name(format!("sluice-{kind}-{index}"))
                        .spawn(move || worker::run(index, batching, serving, queue))
                        .map_err(|e| StageError::Setup {
                            stage: name.clone(),
                            message: format!("cannot start a worker thread: {e}"),
                        })?;
                }
                Ok::<_, StageError>(requests)
            }
        };
        let canary = match &config.canary {
            Some(canary) => Some(Canary {
                config: canary.clone(),
                key: input.index_of(&canary.key)?,
                requests: lane("canary", &canary.version).await?,
            }),
            None => None,
        };
        let shadow = match &config.shadow {
            Some(shadow) => Some(Shadow {
                config: shadow.clone(),
                key: input.index_of(&shadow.key)?,
                requests: lane("shadow", &shadow.version).await?,
            }),
            None => None,
        };
        let (stop, stopped) = mpsc::channel();
        let watcher = Watcher {
            stage: name.clone(),
            model: model_name.clone(),
            registry: registry.clone(),
            plan,
            workers: config.workers,
            contract,
            serving,
            interval: config.watch_interval,
            stats: stats.clone(),
        };
        std::thread::Builder::new()
            .name("sluice-model-watch".into())
            .spawn(move || watcher.run(stopped))
            .map_err(|e| setup(format!("cannot start the model watcher: {e}")))?;

        Ok(InferStage {
            name,
            requests,
            input_elems: plans.iter().map(|p| p.elem).collect(),
            input_columns,
            outputs,
            drop,
            output_schema,
            placement,
            drift,
            probabilities,
            canary,
            shadow,
            live,
            model: model_name,
            stats: stats.clone(),
            _stop_watcher: stop,
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn placement(&self) -> Placement {
        self.placement
    }

    pub async fn process(&self, rows: RecordBatch) -> Result<StageOutput, StageError> {
        let mut columns: Vec<ArrayRef> = rows
            .columns()
            .iter()
            .enumerate()
            .filter(|(i, _)| !self.drop.contains(i))
            .map(|(_, c)| c.clone())
            .collect();
        let served = self.serve(&rows).await?;
        let shadowed = match &self.shadow {
            Some(shadow) => self.shadow(shadow, &rows, &served).await?,
            None => Vec::new(),
        };
        columns.extend(served.outputs);
        columns.push(served.versions);
        columns.extend(shadowed);
        Ok(StageOutput {
            rows: RecordBatch::try_new(self.output_schema.clone(), columns)?,
            rejected: served.rejected,
            aggregated: false,
        })
    }

    /// Runs `rows` through the workers behind `requests`: the output columns, the version
    /// that made them, the rows it rejected; drift is counted for that version.
    async fn infer(
        &self,
        rows: &RecordBatch,
        requests: &mpsc::Sender<Request>,
    ) -> Result<LaneReply, StageError> {
        let mut invalid = Vec::new();
        let mut inputs = Vec::with_capacity(self.input_columns.len());
        for (columns, elem) in self.input_columns.iter().zip(&self.input_elems) {
            let arrays: Vec<&ArrayRef> = columns.iter().map(|&i| rows.column(i)).collect();
            let mut nulls = Vec::new();
            let matrix =
                input_matrix(&arrays, *elem, &mut nulls).map_err(|source| StageError::Input {
                    stage: self.name.clone(),
                    source,
                })?;
            invalid.extend(
                nulls
                    .into_iter()
                    .map(|row| (row, "a model input column is null".to_owned())),
            );
            inputs.push(matrix);
        }
        invalid.sort_by_key(|(row, _)| *row);
        invalid.dedup_by_key(|(row, _)| *row);
        let (reply, response) = oneshot::channel();
        let request = Request {
            inputs,
            rows: rows.num_rows(),
            invalid,
            reply,
        };
        let closed = || StageError::Failed {
            stage: self.name.clone(),
            message: "the inference workers stopped".into(),
        };
        requests.send(request).map_err(|_| closed())?;
        let reply = response.await.map_err(|_| closed())?;
        let outputs = self
            .outputs
            .iter()
            .zip(reply.outputs)
            .map(|(spec, buffer)| spec.array(buffer))
            .collect::<Result<Vec<_>, _>>()?;
        let probabilities = self.probabilities.map(|i| &outputs[i]);
        self.drift
            .observe(&reply.version, rows.columns(), probabilities);
        if let (Some(live), Some(probabilities)) = (&self.live, probabilities) {
            live.observe(&reply.version, rows.columns(), probabilities);
        }
        Ok(LaneReply {
            outputs,
            version: reply.version,
            rejected: reply.rejected,
        })
    }
}

//! The model version an `infer` stage is serving, and the hot swap.
//!
//! [`Serving`] holds the current [`LoadedModel`]: one ONNX Runtime session per worker, all
//! of the same version. A watcher thread polls the registry's `current` pointer; when it
//! names another version, the watcher opens that version's sessions, checks them against
//! what the stage feeds and reads (input names and types, output types and widths) and runs
//! a warm-up, all off the hot path, then replaces the `Arc` in one store. Workers pick the
//! model up between runs, so a batch never mixes versions. A version that fails any step
//! is logged and remembered as rejected; the old one keeps serving.

use std::collections::HashSet;
use std::path::Path;
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use ort::session::Session;

use super::tensors::{Elem, OutputSpec};
use crate::model::session::{outlet_shape, warm_up};
use crate::model::{DevicePlan, ModelError, ModelVersion, Registry};

/// What the stage needs from any version it serves.
#[derive(Debug, Clone)]
pub struct Contract {
    /// Model input name and the element type the stage feeds.
    pub inputs: Vec<(String, Elem)>,
    pub outputs: Vec<OutputSpec>,
}

/// One version, loaded: a session per worker.
pub struct LoadedModel {
    /// `NAME/VERSION`.
    pub label: Arc<str>,
    pub sessions: Vec<Mutex<Session>>,
}

/// The version in use, swapped atomically.
pub struct Serving {
    current: RwLock<Arc<LoadedModel>>,
}

impl Serving {
    pub fn new(model: LoadedModel) -> Self {
        Serving {
            current: RwLock::new(Arc::new(model)),
        }
    }

    pub fn current(&self) -> Arc<LoadedModel> {
        match self.current.read() {
            Ok(guard) => guard.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    fn replace(&self, model: LoadedModel) {
        let model = Arc::new(model);
        match self.current.write() {
            Ok(mut guard) => *guard = model,
            Err(poisoned) => *poisoned.into_inner() = model,
        }
    }
}

/// Opens `workers` sessions of `version`, checks them against `contract`, warms them up.
pub fn load(
    plan: &DevicePlan,
    version: &ModelVersion,
    workers: usize,
    contract: &Contract,
) -> Result<LoadedModel, ModelError> {
    let path = version.model_path();
    let mut sessions = Vec::with_capacity(workers);
    for _ in 0..workers {
        let mut session = plan.open(&path)?;
        check(&session, contract, &path)?;
        warm_up(&mut session, &path)?;
        sessions.push(Mutex::new(session));
    }
    Ok(LoadedModel {
        label: version.label().into(),
        sessions,
    })
}

fn check(session: &Session, contract: &Contract, path: &Path) -> Result<(), ModelError> {
    let fail = |message: String| ModelError::Incompatible {
        path: path.to_owned(),
        message,
    };
    for (name, elem) in &contract.inputs {
        let input = session
            .inputs()
            .iter()
            .find(|i| i.name() == name)
            .ok_or_else(|| fail(format!("the model has no input `{name}`")))?;
        let ty = outlet_shape(input.dtype()).and_then(|(ty, _)| Elem::from_ort(ty));
        if ty != Some(*elem) {
            return Err(fail(format!(
                "input `{name}` is {:?}, the stage feeds {elem:?}",
                input.dtype()
            )));
        }
    }
    if let Some(extra) = session
        .inputs()
        .iter()
        .find(|i| !contract.inputs.iter().any(|(name, _)| name == i.name()))
    {
        return Err(fail(format!(
            "the model needs input `{}`, which the stage does not map",
            extra.name()
        )));
    }
    for spec in &contract.outputs {
        let output = session
            .outputs()
            .iter()
            .find(|o| o.name() == spec.output)
            .ok_or_else(|| fail(format!("the model has no output `{}`", spec.output)))?;
        let Some((ty, tail)) = outlet_shape(output.dtype()) else {
            return Err(fail(format!("output `{}` is not a tensor", spec.output)));
        };
        let width = tail.iter().try_fold(1_i64, |acc, d| d.map(|d| acc * d));
        if Elem::from_ort(ty) != Some(spec.elem) || width != Some(spec.width as i64) {
            return Err(fail(format!(
                "output `{}` is {ty:?} with {tail:?} values per row; the pipeline expects {:?} with {} (column `{}`)",
                spec.output, spec.elem, spec.width, spec.column
            )));
        }
    }
    Ok(())
}

/// Everything the watcher thread needs.
pub struct Watcher {
    pub stage: String,
    pub model: String,
    pub registry: Registry,
    pub plan: DevicePlan,
    pub workers: usize,
    pub contract: Contract,
    pub serving: Arc<Serving>,
    pub interval: Duration,
    pub stats: Arc<crate::telemetry::Stats>,
}

impl Watcher {
    /// Polls until `stop` is signalled or dropped.
    pub fn run(self, stop: Receiver<()>) {
        let mut rejected: HashSet<String> = HashSet::new();
        loop {
            match stop.recv_timeout(self.interval) {
                Err(RecvTimeoutError::Timeout) => {}
                Ok(()) | Err(RecvTimeoutError::Disconnected) => return,
            }
            let version = match self.registry.current(&self.model) {
                Ok(version) => version,
                Err(e) => {
                    tracing::warn!(stage = %self.stage, error = %e, "cannot read the model's current pointer; keeping the serving version");
                    continue;
                }
            };
            let label = version.label();
            let serving = self.serving.current().label.clone();
            if *label == *serving || rejected.contains(&label) {
                continue;
            }
            tracing::info!(stage = %self.stage, from = %serving, to = %label, "new model version published; loading it");
            match load(&self.plan, &version, self.workers, &self.contract) {
                Ok(model) => {
                    self.serving.replace(model);
                    self.stats
                        .record_model_serving(&self.stage, &self.model, &version.version);
                    tracing::info!(stage = %self.stage, version = %label, "model swapped in");
                }
                Err(e) => {
                    tracing::error!(stage = %self.stage, version = %label, serving = %serving, error = %e, "model version rejected; the serving version stays");
                    self.stats
                        .record_model_rejected(&self.stage, &self.model, &version.version);
                    rejected.insert(label);
                }
            }
        }
    }
}

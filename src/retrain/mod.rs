//! `sluice retrain JOB.yaml`: train a new model version from what a pipeline accumulated,
//! check it against the serving one on the same holdout, and publish it if it is better.
//!
//! ```text
//! Parquet dataset --polars--> labelled rows --split by id hash--> train | holdout
//!   train --trainer--> classifier --export--> ONNX --ONNX Runtime--> holdout predictions
//!   current version --ONNX Runtime--> holdout predictions
//!   gate: candidate beats current by min_improvement on the metric -> publish + move `current`
//! ```
//!
//! The running pipelines pick the new version up through the registry watcher (see
//! `stage::infer::serving`); nothing here talks to them.

pub mod dataset;
pub(crate) mod finetune;
pub mod onnx_export;
pub mod onnx_proto;
pub mod profile;
pub mod report;
pub mod trainer;

use std::path::{Path, PathBuf};

use ort::value::TensorRef;

use serde::Serialize;

use crate::config::job::LabelConfig;
use crate::config::Device;
use crate::model::metrics::Metrics;
use crate::model::{DevicePlan, ModelError, ModelVersion, Registry, RegistryError};
use crate::pipeline::job::LoadedJob;

#[derive(Debug, thiserror::Error)]
pub enum RetrainError {
    #[error(transparent)]
    Dataset(#[from] dataset::DatasetError),
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error(transparent)]
    Registry(#[from] RegistryError),
    #[error("retrain {job}: {message}")]
    Job { job: String, message: String },
    #[error("dataset: {0}")]
    Storage(#[from] crate::storage::StorageError),
    #[error("{}: {source}", .path.display())]
    Io {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
}

/// The local directory to read the job's dataset from. A Parquet dataset on an object
/// store is read from a local copy of its committed files; a Delta table (local or not)
/// from its live files only (those its log adds and has not removed), linked or copied.
fn dataset_root(loaded: &LoadedJob) -> Result<(PathBuf, Option<tempfile::TempDir>), RetrainError> {
    let path = loaded.path(&loaded.job.dataset.path);
    let location = crate::storage::open(&path, &loaded.job.storage)?;
    let is_delta = match &location {
        crate::storage::Location::Local(root) => root.join("_delta_log").is_dir(),
        crate::storage::Location::Object(object) => !object
            .names("_delta_log")
            .map_err(|source| RetrainError::Io {
                path: PathBuf::from(&object.url),
                source,
            })?
            .is_empty(),
    };
    if !is_delta {
        if let crate::storage::Location::Local(root) = location {
            return Ok((root, None));
        }
    }
    let copy = tempfile::Builder::new()
        .prefix("sluice-dataset-")
        .tempdir()
        .map_err(|source| RetrainError::Io {
            path: std::env::temp_dir(),
            source,
        })?;
    let files = match location {
        crate::storage::Location::Object(object) if !is_delta => {
            crate::storage::download_dataset(&object, copy.path())
        }
        location => link_live_files(location, copy.path()),
    }
    .map_err(|source| RetrainError::Io {
        path: path.clone(),
        source,
    })?;
    tracing::info!(dataset = %path.display(), files, delta = is_delta, "read the dataset's files into a local directory");
    Ok((copy.path().to_owned(), Some(copy)))
}

/// Puts the live files of the Delta table at `location` under `dest` (hard links when
/// local, downloads otherwise). Returns how many.
fn link_live_files(location: crate::storage::Location, dest: &Path) -> std::io::Result<usize> {
    let files = crate::sink::delta::live_files(location.clone()).map_err(std::io::Error::other)?;
    for relative in &files {
        let target = dest.join(relative);
        if let Some(parent) = target.parent() {
            std::fs::create_dir_all(parent)?;
        }
        match &location {
            crate::storage::Location::Local(root) => {
                let source = root.join(relative);
                std::fs::hard_link(&source, &target)
                    .or_else(|_| std::fs::copy(&source, &target).map(|_| ()))?
            }
            crate::storage::Location::Object(object) => {
                crate::storage::download(object, relative, &target)?
            }
        }
    }
    Ok(files.len())
}

/// The labels file of a join, downloaded to a temp directory when it is an object.
fn labels_file(
    loaded: &LoadedJob,
    path: &Path,
) -> Result<(PathBuf, Option<tempfile::TempDir>), RetrainError> {
    let path = loaded.path(path);
    let crate::storage::Location::Object(object) =
        crate::storage::open(&path, &loaded.job.storage)?
    else {
        return Ok((path, None));
    };
    let temp_error = |source| RetrainError::Io {
        path: std::env::temp_dir(),
        source,
    };
    let copy = tempfile::Builder::new()
        .prefix("sluice-labels-")
        .tempdir()
        .map_err(temp_error)?;
    // The file name keeps its extension (`.csv`, `.parquet`): it says how to read it.
    let name = path.file_name().unwrap_or("labels".as_ref());
    let local = copy.path().join(name);
    crate::storage::download(&object, "", &local).map_err(|source| RetrainError::Io {
        path: PathBuf::from(&object.url),
        source,
    })?;
    Ok((local, Some(copy)))
}

/// Options from the command line.
#[derive(Debug, Clone, Default)]
pub struct RetrainOptions {
    /// Publish even if the gate says no.
    pub force: bool,
    /// Train and evaluate, publish nothing.
    pub dry_run: bool,
}

/// What one retrain run did.
#[derive(Debug, Clone, Serialize)]
pub struct RetrainReport {
    pub job: String,
    pub model: String,
    pub train_rows: usize,
    pub holdout_rows: usize,
    pub labelled_rows: usize,
    pub class_counts: Vec<usize>,
    pub gate_metric: crate::config::job::GateMetric,
    pub min_improvement: f64,
    pub candidate: Metrics,
    /// `NAME/VERSION` and metrics of the serving version on the same holdout.
    pub current: Option<(String, Metrics)>,
    /// ONNX Runtime vs the trainer's own predictions on the holdout.
    pub onnx_max_abs_diff: f32,
    /// Area under the ROC curve of the second class (binary models).
    pub roc_auc: Option<f64>,
    pub published: Option<String>,
    pub reason: String,
}

impl std::fmt::Display for RetrainReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let metric = serde_json::to_value(self.gate_metric)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default();
        let candidate = self.candidate.score(self.gate_metric);
        write!(
            f,
            "retrain {}: candidate {metric} {:.4}",
            self.job,
            candidate.abs()
        )?;
        if let Some((version, current)) = &self.current {
            write!(
                f,
                " vs {version} {:.4}",
                current.score(self.gate_metric).abs()
            )?;
        }
        write!(
            f,
            " on {} holdout rows ({} train); ",
            self.holdout_rows, self.train_rows
        )?;
        match &self.published {
            Some(version) => write!(f, "published {version} ({})", self.reason),
            None => write!(f, "not published ({})", self.reason),
        }
    }
}

/// Predictions of an ONNX classifier on row-major features.
fn predict_onnx(
    plan: &DevicePlan,
    model: &Path,
    input: &str,
    x: &[f32],
    width: usize,
    classes: usize,
) -> Result<Vec<f32>, ModelError> {
    let fail = |e: ort::Error| ModelError::Load {
        path: model.to_owned(),
        message: e.to_string(),
    };
    let mut session = plan.open(model)?;
    let mut out = Vec::with_capacity(x.len() / width.max(1) * classes);
    for chunk in x.chunks(4096 * width.max(1)) {
        let rows = chunk.len() / width.max(1);
        let tensor = TensorRef::from_array_view(([rows, width], chunk)).map_err(fail)?;
        let outputs = session
            .run(vec![(
                input.to_owned(),
                ort::session::SessionInputValue::from(tensor),
            )])
            .map_err(fail)?;
        let value = outputs
            .get("probabilities")
            .ok_or_else(|| ModelError::Incompatible {
                path: model.to_owned(),
                message: "the model has no `probabilities` output".into(),
            })?;
        let (_, data) = value.try_extract_tensor::<f32>().map_err(fail)?;
        out.extend_from_slice(data);
    }
    Ok(out)
}

/// Runs one retrain job.
///
/// Long on purpose: the retrain job is a sequence (dataset, train, export, evaluate both
/// versions, gate, publish, report) that reads top to bottom like the diagram above.
pub fn run(
    loaded: &LoadedJob,
    options: &RetrainOptions,
    mut on_epoch: impl FnMut(usize, usize, f32),
) -> Result<RetrainReport, RetrainError> {
    let job = &loaded.job;
    let bad = |message: String| RetrainError::Job {
        job: job.name.clone(),
        message,
    };
    let registry = Registry::open(&loaded.path(&job.models), &job.storage)?;
    let labels = &job.model.labels;
    let (labels_path, _labels_copy) = match &job.dataset.label {
        LabelConfig::Join(join) => {
            let (path, copy) = labels_file(loaded, &join.path)?;
            (Some(path), copy)
        }
        _ => (None, None),
    };
    // A dataset on an object store is read from a local copy of its committed files.
    let (dataset_root, _copy) = dataset_root(loaded)?;
    let fine_tune = job.trainer.fine_tune.as_ref();
    let split = dataset::load(
        &job.dataset,
        &dataset_root,
        labels_path.as_deref(),
        labels,
        fine_tune.is_some(),
    )?;
    if split.train.rows() < labels.len() || split.holdout.rows() == 0 {
        return Err(bad(format!(
            "too few labelled rows: {} train, {} holdout ({} labelled: {})",
            split.train.rows(),
            split.holdout.rows(),
            split.labelled_rows,
            dataset::describe(&split.class_counts, labels)
        )));
    }
    tracing::info!(job = %job.name, train = split.train.rows(), holdout = split.holdout.rows(), classes = %dataset::describe(&split.class_counts, labels), "dataset ready");

    let work = tempfile::tempdir().map_err(|source| RetrainError::Io {
        path: std::env::temp_dir(),
        source,
    })?;
    let epochs = job.trainer.epochs;
    let on_epoch = |epoch, loss| on_epoch(epoch, epochs, loss);
    let trained = match fine_tune {
        None => train_head(job, &split, work.path(), on_epoch)?,
        Some(fine) => train_text_model(&registry, job, fine, &split, work.path(), on_epoch)?,
    };
    let onnx_path = trained.onnx;
    let onnx_probs = trained.probabilities;
    let onnx_max_abs_diff = trained.onnx_max_abs_diff;
    if onnx_max_abs_diff > 1e-4 {
        return Err(bad(format!(
            "the exported ONNX model disagrees with the trainer by {onnx_max_abs_diff}"
        )));
    }
    let plan = DevicePlan::resolve(Device::Cpu, 0, 0, None, &onnx_path, "retrain")?;
    let holdout = &split.holdout;
    let candidate_metrics = Metrics::compute(labels, &holdout.y, &onnx_probs);
    let roc_curve = (labels.len() == 2).then(|| {
        let truth: Vec<bool> = holdout.y.iter().map(|&y| y == 1).collect();
        let scores: Vec<f32> = onnx_probs.chunks(2).map(|p| p[1]).collect();
        report::roc(&truth, &scores)
    });

    let current = match registry.current(&job.model.name) {
        Ok(version) => Some(match fine_tune {
            None => evaluate_current(&registry, &plan, &version, loaded, holdout)?,
            Some(fine) => evaluate_current_text(&registry, &plan, &version, job, fine, holdout)?,
        }),
        Err(RegistryError::NoCurrent { .. }) => None,
        Err(e) => return Err(e.into()),
    };
    let metric = job.gate.metric;
    let (publish, reason) = match &current {
        None => (true, "no current version".to_owned()),
        Some((_, Err(why))) => (
            options.force,
            format!("the current version cannot be compared: {why}"),
        ),
        Some((version, Ok(current))) => {
            let gain = candidate_metrics.score(metric) - current.score(metric);
            let beats = gain > 0.0 && gain >= job.gate.min_improvement;
            let text = format!(
                "{gain:+.4} vs {version}, needed +{}",
                job.gate.min_improvement
            );
            (
                beats || options.force,
                if options.force && !beats {
                    format!("forced; {text}")
                } else {
                    text
                },
            )
        }
    };
    let mut report = RetrainReport {
        job: job.name.clone(),
        model: job.model.name.clone(),
        train_rows: split.train.rows(),
        holdout_rows: holdout.rows(),
        labelled_rows: split.labelled_rows,
        class_counts: split.class_counts.clone(),
        gate_metric: metric,
        min_improvement: job.gate.min_improvement,
        candidate: candidate_metrics.clone(),
        current: current
            .as_ref()
            .and_then(|(v, m)| m.as_ref().ok().map(|m| (v.clone(), m.clone()))),
        onnx_max_abs_diff,
        roc_auc: roc_curve.as_ref().map(|(_, auc)| *auc),
        published: None,
        reason,
    };
    if publish && !options.dry_run {
        let mut metrics = serde_json::Map::new();
        metrics.insert("holdout_accuracy".into(), candidate_metrics.accuracy.into());
        metrics.insert("holdout_macro_f1".into(), candidate_metrics.macro_f1.into());
        metrics.insert("holdout_log_loss".into(), candidate_metrics.log_loss.into());
        metrics.insert("train_rows".into(), split.train.rows().into());
        metrics.insert("holdout_rows".into(), holdout.rows().into());
        let mut manifest = (trained.manifest)(
            metrics,
            &format!("trained by `sluice retrain` ({})", job.name),
        );
        manifest.profile = Some(trained.profile);
        let report_path = work.path().join("report.json");
        report.published = Some(format!(
            "{}/{}",
            job.model.name,
            registry
                .versions(&job.model.name)
                .map(|v| v.len() + 1)
                .unwrap_or(1)
        ));
        let json = serde_json::to_string_pretty(&report).unwrap_or_default();
        std::fs::write(&report_path, json).map_err(|source| RetrainError::Io {
            path: report_path.clone(),
            source,
        })?;
        let picture = work.path().join("report.png");
        let title = format!(
            "{} candidate: accuracy {:.3}, macro-F1 {:.3}",
            job.model.name, candidate_metrics.accuracy, candidate_metrics.macro_f1
        );
        let curve = roc_curve
            .as_ref()
            .map(|(points, auc)| (points.as_slice(), *auc));
        let mut extra: Vec<&Path> = vec![&report_path];
        extra.extend(trained.extra.iter().map(PathBuf::as_path));
        match report::draw(&picture, &title, &candidate_metrics, labels, curve) {
            Ok(()) => extra.push(&picture),
            Err(e) => {
                tracing::warn!(error = %e, "the report picture could not be drawn; publishing without it")
            }
        }
        let version = registry.publish(&onnx_path, manifest, &extra, true)?;
        report.published = Some(version.label());
    }
    Ok(report)
}

/// Makes a candidate's manifest from its metrics and description.
type ManifestFor =
    Box<dyn FnOnce(serde_json::Map<String, serde_json::Value>, &str) -> crate::model::Manifest>;

/// A trained candidate, exported and predicted on the holdout by ONNX Runtime.
struct Trained {
    onnx: PathBuf,
    /// ONNX Runtime's holdout probabilities, row-major.
    probabilities: Vec<f32>,
    /// ONNX Runtime vs the trainer's own forward pass on the holdout.
    onnx_max_abs_diff: f32,
    /// The manifest, given its metrics and description.
    manifest: ManifestFor,
    profile: crate::model::Profile,
    /// Files published beside the model (a tokenizer).
    extra: Vec<PathBuf>,
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    if a.len() != b.len() {
        return f32::INFINITY;
    }
    a.iter()
        .zip(b)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f32::max)
}

/// A head (softmax regression or MLP) on stored features.
fn train_head(
    job: &crate::config::job::RetrainJob,
    split: &dataset::Split,
    work: &Path,
    on_epoch: impl FnMut(usize, f32),
) -> Result<Trained, RetrainError> {
    let labels = &job.model.labels;
    let candidate = trainer::train(
        &split.train,
        labels.clone(),
        &job.model.input,
        &job.trainer,
        on_epoch,
    );
    let onnx = work.join("model.onnx");
    std::fs::write(&onnx, candidate.to_onnx(&job.model.name)).map_err(|source| {
        RetrainError::Io {
            path: onnx.clone(),
            source,
        }
    })?;
    let plan = DevicePlan::resolve(Device::Cpu, 0, 0, None, &onnx, "retrain")?;
    let holdout = &split.holdout;
    let probabilities = predict_onnx(
        &plan,
        &onnx,
        &job.model.input,
        &holdout.x,
        holdout.width,
        labels.len(),
    )?;
    let own: Vec<f32> = (0..holdout.rows())
        .flat_map(|r| candidate.predict_proba(holdout.row(r)))
        .collect();
    let profile = profile::compute(
        &job.dataset.features,
        &split.train,
        holdout,
        &probabilities,
        labels.len(),
    );
    let name = job.model.name.clone();
    Ok(Trained {
        onnx,
        onnx_max_abs_diff: max_abs_diff(&own, &probabilities),
        probabilities,
        manifest: Box::new(move |metrics, description| {
            candidate.manifest(&name, metrics, description)
        }),
        profile,
        extra: Vec::new(),
    })
}

/// The whole text model (`trainer.fine_tune`), from the current version of its encoder.
fn train_text_model(
    registry: &Registry,
    job: &crate::config::job::RetrainJob,
    fine: &crate::config::job::FineTuneConfig,
    split: &dataset::Split,
    work: &Path,
    on_epoch: impl FnMut(usize, f32),
) -> Result<Trained, RetrainError> {
    let bad = |message: String| RetrainError::Job {
        job: job.name.clone(),
        message,
    };
    let labels = &job.model.labels;
    let start = registry.current(&fine.encoder)?;
    let start_path = start.model_path();
    let bytes = std::fs::read(&start_path).map_err(|source| RetrainError::Io {
        path: start_path.clone(),
        source,
    })?;
    let weights = finetune::onnx::read(&bytes, labels.len())
        .map_err(|m| bad(format!("{}: {m}", start_path.display())))?;
    let tokenizer = finetune::tokenizer_file(&start.dir);
    let max_len = fine.max_len.min(weights.shape.positions);
    let tokenize = |texts: &[String]| {
        finetune::tokenize(&tokenizer, texts, max_len).map_err(|m| bad(format!("tokenizer: {m}")))
    };
    let train_tokens = tokenize(&split.train.text)?;
    let holdout_tokens = tokenize(&split.holdout.text)?;
    let shape = weights.shape;
    let model = finetune::bert::Bert::from_values(shape, weights.values, &candle_core::Device::Cpu)
        .map_err(|m| bad(format!("{}: {m}", start_path.display())))?;
    tracing::info!(job = %job.name, encoder = %start.label(), ?shape, rows = train_tokens.ids.len(), epochs = job.trainer.epochs, "fine-tuning the encoder with its head");
    let started = std::time::Instant::now();
    let candle = |e: candle_core::Error| bad(format!("fine-tuning: {e}"));
    finetune::train(
        &model,
        &train_tokens,
        &split.train.y,
        &job.trainer,
        fine,
        on_epoch,
    )
    .map_err(candle)?;
    tracing::info!(job = %job.name, seconds = started.elapsed().as_secs_f64(), "fine-tuning done");
    let values = model.values().map_err(candle)?;
    let onnx = work.join("model.onnx");
    std::fs::write(
        &onnx,
        finetune::onnx::export(&shape, &values, &job.model.name),
    )
    .map_err(|source| RetrainError::Io {
        path: onnx.clone(),
        source,
    })?;
    let published_tokenizer = work.join("tokenizer.json");
    std::fs::copy(&tokenizer, &published_tokenizer).map_err(|source| RetrainError::Io {
        path: tokenizer.clone(),
        source,
    })?;
    let plan = DevicePlan::resolve(Device::Cpu, 0, 0, None, &onnx, "retrain")?;
    let probabilities = finetune::predict_onnx(&plan, &onnx, &holdout_tokens, labels.len())?;
    let (own, _) = finetune::predict(&model, &holdout_tokens).map_err(candle)?;
    // The reference profile: predictions, and the holdout's tokens per row (the `tokens`
    // drift signal of a stage serving this model).
    let mut profile = profile::compute(
        &crate::config::job::FeatureColumns::Columns(Vec::new()),
        &split.train,
        &split.holdout,
        &probabilities,
        labels.len(),
    );
    let lengths: Vec<usize> = holdout_tokens.ids.iter().map(Vec::len).collect();
    profile.tokens = Some(profile::tokens(&lengths));
    let name = job.model.name.clone();
    let labels = labels.clone();
    Ok(Trained {
        onnx,
        onnx_max_abs_diff: max_abs_diff(&own, &probabilities),
        probabilities,
        manifest: Box::new(move |metrics, description| {
            finetune::manifest(&name, &shape, &labels, metrics, description)
        }),
        profile,
        extra: vec![published_tokenizer],
    })
}

/// The serving version of a text model, on the holdout texts (tokenized with its own
/// tokenizer), or why it cannot be compared.
fn evaluate_current_text(
    registry: &Registry,
    plan: &DevicePlan,
    version: &ModelVersion,
    job: &crate::config::job::RetrainJob,
    fine: &crate::config::job::FineTuneConfig,
    holdout: &trainer::Examples,
) -> Result<(String, Result<Metrics, String>), RetrainError> {
    let manifest = registry.manifest(version)?;
    let label = version.label();
    if manifest.labels.as_ref() != Some(&job.model.labels) {
        return Ok((
            label,
            Err(format!(
                "its labels {:?} differ from the job's {:?}",
                manifest.labels, job.model.labels
            )),
        ));
    }
    if !finetune::takes_tokens(&manifest) {
        return Ok((label, Err("it does not take token ids".into())));
    }
    let tokens = match finetune::tokenize(
        &finetune::tokenizer_file(&version.dir),
        &holdout.text,
        fine.max_len,
    ) {
        Ok(tokens) => tokens,
        Err(why) => return Ok((label, Err(format!("its tokenizer: {why}")))),
    };
    let probs =
        finetune::predict_onnx(plan, &version.model_path(), &tokens, job.model.labels.len())?;
    Ok((
        label,
        Ok(Metrics::compute(&job.model.labels, &holdout.y, &probs)),
    ))
}

/// The serving version's metrics on the holdout, or why it cannot be compared.
fn evaluate_current(
    registry: &Registry,
    plan: &DevicePlan,
    version: &ModelVersion,
    loaded: &LoadedJob,
    holdout: &trainer::Examples,
) -> Result<(String, Result<Metrics, String>), RetrainError> {
    let job = &loaded.job;
    let manifest = registry.manifest(version)?;
    let label = version.label();
    if manifest.labels.as_ref() != Some(&job.model.labels) {
        return Ok((
            label,
            Err(format!(
                "its labels {:?} differ from the job's {:?}",
                manifest.labels, job.model.labels
            )),
        ));
    }
    let input = manifest
        .input(&job.model.input)
        .and_then(|i| i.fixed_tail());
    if input != Some(vec![holdout.width as i64]) {
        return Ok((
            label,
            Err(format!(
                "its input `{}` does not take {} features",
                job.model.input, holdout.width
            )),
        ));
    }
    let probs = predict_onnx(
        plan,
        &version.model_path(),
        &job.model.input,
        &holdout.x,
        holdout.width,
        job.model.labels.len(),
    )?;
    Ok((
        label,
        Ok(Metrics::compute(&job.model.labels, &holdout.y, &probs)),
    ))
}

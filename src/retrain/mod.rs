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

mod candidate;
pub mod dataset;
pub(crate) mod finetune;
pub mod onnx_export;
pub mod onnx_proto;
pub mod profile;
pub mod report;
pub mod trainer;

use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::config::job::LabelConfig;
use crate::config::Device;
use crate::model::metrics::Metrics;
use crate::model::{DevicePlan, ModelError, Registry, RegistryError};
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
        None => candidate::train_head(job, &split, work.path(), on_epoch)?,
        Some(fine) => {
            candidate::train_text_model(&registry, job, fine, &split, work.path(), on_epoch)?
        }
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
            None => candidate::evaluate_current(&registry, &plan, &version, loaded, holdout)?,
            Some(fine) => {
                candidate::evaluate_current_text(&registry, &plan, &version, job, fine, holdout)?
            }
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

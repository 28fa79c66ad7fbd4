//! Training a candidate and scoring the serving version on the same holdout: a head on
//! stored features or a fine-tuned text model, each exported to ONNX and predicted by ONNX
//! Runtime (what the gate in [`super::run`] compares).

use std::path::{Path, PathBuf};

use ort::value::TensorRef;

use super::{dataset, finetune, profile, trainer, RetrainError};
use crate::config::Device;
use crate::model::metrics::Metrics;
use crate::model::{DevicePlan, ModelError, ModelVersion, Registry};
use crate::pipeline::job::LoadedJob;

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
        out.extend_from_slice(finetune::probabilities(&outputs, model)?);
    }
    Ok(out)
}

/// Makes a candidate's manifest from its metrics and description.
pub(super) type ManifestFor =
    Box<dyn FnOnce(serde_json::Map<String, serde_json::Value>, &str) -> crate::model::Manifest>;

/// A trained candidate, exported and predicted on the holdout by ONNX Runtime.
pub(super) struct Trained {
    pub(super) onnx: PathBuf,
    /// ONNX Runtime's holdout probabilities, row-major.
    pub(super) probabilities: Vec<f32>,
    /// ONNX Runtime vs the trainer's own forward pass on the holdout.
    pub(super) onnx_max_abs_diff: f32,
    /// The manifest, given its metrics and description.
    pub(super) manifest: ManifestFor,
    pub(super) profile: crate::model::Profile,
    /// Files published beside the model (a tokenizer).
    pub(super) extra: Vec<PathBuf>,
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
pub(super) fn train_head(
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
pub(super) fn train_text_model(
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
pub(super) fn evaluate_current_text(
    registry: &Registry,
    plan: &DevicePlan,
    version: &ModelVersion,
    job: &crate::config::job::RetrainJob,
    fine: &crate::config::job::FineTuneConfig,
    holdout: &trainer::Examples,
) -> Result<(String, Result<Metrics, String>), RetrainError> {
    let manifest = registry.manifest(version)?;
    let label = version.label();
    if let Some(why) = other_labels(&manifest, job) {
        return Ok((label, Err(why)));
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

/// Why the serving version cannot be compared when its labels are not the job's.
fn other_labels(
    manifest: &crate::model::Manifest,
    job: &crate::config::job::RetrainJob,
) -> Option<String> {
    (manifest.labels.as_ref() != Some(&job.model.labels)).then(|| {
        format!(
            "its labels {:?} differ from the job's {:?}",
            manifest.labels, job.model.labels
        )
    })
}

/// The serving version's metrics on the holdout, or why it cannot be compared.
pub(super) fn evaluate_current(
    registry: &Registry,
    plan: &DevicePlan,
    version: &ModelVersion,
    loaded: &LoadedJob,
    holdout: &trainer::Examples,
) -> Result<(String, Result<Metrics, String>), RetrainError> {
    let job = &loaded.job;
    let manifest = registry.manifest(version)?;
    let label = version.label();
    if let Some(why) = other_labels(&manifest, job) {
        return Ok((label, Err(why)));
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

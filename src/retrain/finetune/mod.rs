//! `trainer.fine_tune`: fine-tuning a whole text encoder with a classification head.
//!
//! ```text
//! current version of `encoder` (ONNX + tokenizer.json) --onnx::read--> Bert (candle Vars)
//! train texts --tokenizer--> token ids --length buckets--> batches
//!   --forward, cross-entropy, backward, AdamW (encoder and head step sizes, warmup + decay)-->
//! trained Bert --onnx::export--> model.onnx (token ids -> sentence_embedding, probabilities)
//! ```
//!
//! The result goes through the same checks as a head (`super::run`): ONNX Runtime's
//! holdout predictions must match the trainer's own forward pass within 1e-4, and the gate
//! compares it with the serving version on the same holdout texts.

pub(crate) mod bert;
pub(crate) mod onnx;

use std::path::{Path, PathBuf};
use std::time::Instant;

use candle_core::Device;
use candle_nn::{AdamW, Optimizer, ParamsAdamW};
use ort::value::TensorRef;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use tokenizers::{Tokenizer, TruncationParams};

use crate::config::job::{FineTuneConfig, TrainConfig};
use crate::model::{DevicePlan, Dim, Manifest, ModelError, TensorSpec};

use bert::{Bert, TokenBatch};

/// Texts as token ids and type ids, in row order.
#[derive(Debug, Clone, Default)]
pub(crate) struct Tokenized {
    pub ids: Vec<Vec<u32>>,
    pub types: Vec<Vec<u32>>,
}

impl Tokenized {
    fn rows(&self) -> usize {
        self.ids.len()
    }

    fn batch(&self, rows: &[usize]) -> candle_core::Result<TokenBatch> {
        let pairs: Vec<(&[u32], &[u32])> = rows
            .iter()
            .map(|&r| (self.ids[r].as_slice(), self.types[r].as_slice()))
            .collect();
        TokenBatch::new(&pairs, &Device::Cpu)
    }
}

/// Tokenizes `texts` with the tokenizer file, cut at `max_len` tokens, unpadded.
pub(crate) fn tokenize(path: &Path, texts: &[String], max_len: usize) -> Result<Tokenized, String> {
    let mut tokenizer =
        Tokenizer::from_file(path).map_err(|e| format!("{}: {e}", path.display()))?;
    tokenizer.with_padding(None);
    tokenizer
        .with_truncation(Some(TruncationParams {
            max_length: max_len,
            ..Default::default()
        }))
        .map_err(|e| format!("truncation to {max_len}: {e}"))?;
    let inputs: Vec<&str> = texts.iter().map(String::as_str).collect();
    let encodings = tokenizer
        .encode_batch_fast(inputs, true)
        .map_err(|e| format!("tokenizing: {e}"))?;
    Ok(Tokenized {
        ids: encodings.iter().map(|e| e.get_ids().to_vec()).collect(),
        types: encodings
            .iter()
            .map(|e| e.get_type_ids().to_vec())
            .collect(),
    })
}

/// Row indices grouped into batches of similar length (little padding). With `rng`, the
/// rows are shuffled first and sorted only within windows of 50 batches, and the batches
/// come in random order (training); without, all rows are sorted (prediction).
fn batches(lengths: &[usize], batch_size: usize, rng: Option<&mut StdRng>) -> Vec<Vec<usize>> {
    let batch_size = batch_size.max(1);
    let mut order: Vec<usize> = (0..lengths.len()).collect();
    let window = match &rng {
        Some(_) => batch_size * 50,
        None => order.len().max(1),
    };
    let mut rng = rng;
    if let Some(rng) = rng.as_deref_mut() {
        order.shuffle(rng);
    }
    for chunk in order.chunks_mut(window) {
        chunk.sort_by_key(|&i| lengths[i]);
    }
    let mut out: Vec<Vec<usize>> = order.chunks(batch_size).map(<[usize]>::to_vec).collect();
    if let Some(rng) = rng {
        out.shuffle(rng);
    }
    out
}

/// The step-size multiplier at `step` of `total`: linear warmup, then linear decay to 0.
fn schedule(step: usize, total: usize, warmup: f64) -> f64 {
    let warm = (total as f64 * warmup).ceil().max(1.0);
    let step = step as f64 + 1.0;
    if step <= warm {
        step / warm
    } else {
        ((total as f64 - step + 1.0) / (total as f64 - warm + 1.0)).max(0.0)
    }
}

/// Trains every weight of `model` on `data` with `labels`; `on_epoch(epoch, mean loss)`
/// after each pass. Returns the mean loss of each epoch.
pub(crate) fn train(
    model: &Bert,
    data: &Tokenized,
    labels: &[usize],
    trainer: &TrainConfig,
    fine: &FineTuneConfig,
    mut on_epoch: impl FnMut(usize, f32),
) -> candle_core::Result<Vec<f32>> {
    let (encoder, head) = model.vars();
    let params = |lr: f64| ParamsAdamW {
        lr,
        weight_decay: f64::from(trainer.l2),
        ..Default::default()
    };
    let encoder_lr = fine.encoder_learning_rate;
    let head_lr = f64::from(trainer.learning_rate);
    let mut encoder_opt = AdamW::new(encoder, params(encoder_lr))?;
    let mut head_opt = AdamW::new(head, params(head_lr))?;
    let lengths: Vec<usize> = data.ids.iter().map(Vec::len).collect();
    let mut rng = StdRng::seed_from_u64(trainer.seed);
    let per_epoch = data.rows().div_ceil(trainer.batch_size.max(1));
    let total = per_epoch * trainer.epochs;
    let mut step = 0;
    let mut losses = Vec::with_capacity(trainer.epochs);
    let started = Instant::now();
    for epoch in 0..trainer.epochs {
        let mut sum = 0.0;
        let mut rows = 0;
        for rows_of_batch in batches(&lengths, trainer.batch_size, Some(&mut rng)) {
            let factor = schedule(step, total, fine.warmup);
            encoder_opt.set_learning_rate(encoder_lr * factor);
            head_opt.set_learning_rate(head_lr * factor);
            let batch = data.batch(&rows_of_batch)?;
            let targets: Vec<u32> = rows_of_batch.iter().map(|&r| labels[r] as u32).collect();
            let (_, logits) = model.forward(&batch)?;
            let loss = bert::loss(&logits, &targets)?;
            let grads = loss.backward()?;
            encoder_opt.step(&grads)?;
            head_opt.step(&grads)?;
            let value = loss.to_scalar::<f32>()?;
            sum += f64::from(value) * rows_of_batch.len() as f64;
            rows += rows_of_batch.len();
            step += 1;
            if step % 50 == 0 {
                tracing::info!(
                    epoch = epoch + 1,
                    step,
                    steps = total,
                    loss = value,
                    rows_per_s =
                        (step * trainer.batch_size) as f64 / started.elapsed().as_secs_f64(),
                    "fine-tuning"
                );
            }
        }
        let mean = (sum / rows.max(1) as f64) as f32;
        losses.push(mean);
        on_epoch(epoch, mean);
    }
    Ok(losses)
}

/// The model's probabilities (`classes` per row) and sentence embeddings (`hidden` per
/// row) for every row, in row order.
pub(crate) fn predict(model: &Bert, data: &Tokenized) -> candle_core::Result<(Vec<f32>, Vec<f32>)> {
    let classes = model.shape.classes;
    let hidden = model.shape.hidden;
    let mut probs = vec![0.0; data.rows() * classes];
    let mut embeddings = vec![0.0; data.rows() * hidden];
    let lengths: Vec<usize> = data.ids.iter().map(Vec::len).collect();
    for rows in batches(&lengths, 64, None) {
        let (embedding, logits) = model.forward(&data.batch(&rows)?)?;
        let p = bert::softmax(&logits)?.to_vec2::<f32>()?;
        let e = embedding.to_vec2::<f32>()?;
        for ((&r, p), e) in rows.iter().zip(p).zip(e) {
            probs[r * classes..(r + 1) * classes].copy_from_slice(&p);
            embeddings[r * hidden..(r + 1) * hidden].copy_from_slice(&e);
        }
    }
    Ok((probs, embeddings))
}

/// `probabilities` of a text model (token ids in, as the tokenize stage feeds it) under
/// ONNX Runtime, in row order.
pub(crate) fn predict_onnx(
    plan: &DevicePlan,
    model: &Path,
    data: &Tokenized,
    classes: usize,
) -> Result<Vec<f32>, ModelError> {
    let fail = |e: ort::Error| ModelError::Load {
        path: model.to_owned(),
        message: e.to_string(),
    };
    let mut session = plan.open(model)?;
    let mut out = vec![0.0; data.rows() * classes];
    let lengths: Vec<usize> = data.ids.iter().map(Vec::len).collect();
    for rows in batches(&lengths, 64, None) {
        let seq = rows.iter().map(|&r| lengths[r]).max().unwrap_or(0).max(1);
        let mut ids = vec![0_i64; rows.len() * seq];
        let mut mask = vec![0_i64; rows.len() * seq];
        let mut types = vec![0_i64; rows.len() * seq];
        for (i, &r) in rows.iter().enumerate() {
            for (j, (&id, &ty)) in data.ids[r].iter().zip(&data.types[r]).enumerate() {
                ids[i * seq + j] = i64::from(id);
                types[i * seq + j] = i64::from(ty);
                mask[i * seq + j] = 1;
            }
        }
        let shape = [rows.len(), seq];
        let inputs = vec![
            (
                "input_ids".to_owned(),
                TensorRef::from_array_view((shape, ids.as_slice())).map_err(fail)?,
            ),
            (
                "attention_mask".to_owned(),
                TensorRef::from_array_view((shape, mask.as_slice())).map_err(fail)?,
            ),
            (
                "token_type_ids".to_owned(),
                TensorRef::from_array_view((shape, types.as_slice())).map_err(fail)?,
            ),
        ];
        let outputs = session
            .run(
                inputs
                    .into_iter()
                    .map(|(name, t)| (name, ort::session::SessionInputValue::from(t)))
                    .collect::<Vec<_>>(),
            )
            .map_err(fail)?;
        let data_out = probabilities(&outputs, model)?;
        if data_out.len() != rows.len() * classes {
            return Err(ModelError::Incompatible {
                path: model.to_owned(),
                message: format!(
                    "`probabilities` has {} values for {} rows of {classes} classes",
                    data_out.len(),
                    rows.len()
                ),
            });
        }
        for (i, &r) in rows.iter().enumerate() {
            out[r * classes..(r + 1) * classes]
                .copy_from_slice(&data_out[i * classes..(i + 1) * classes]);
        }
    }
    Ok(out)
}

/// Whether a served version takes token ids (and can be compared on texts).
pub(crate) fn takes_tokens(manifest: &Manifest) -> bool {
    ["input_ids", "attention_mask", "token_type_ids"]
        .iter()
        .all(|name| manifest.inputs.iter().any(|i| i.name == *name))
}

/// The manifest of a fine-tuned model (version filled in by the registry).
pub(crate) fn manifest(
    name: &str,
    shape: &bert::BertShape,
    labels: &[String],
    metrics: serde_json::Map<String, serde_json::Value>,
    description: &str,
) -> Manifest {
    let spec = |name: &str, dtype: &str, second: Dim| TensorSpec {
        name: name.into(),
        dtype: dtype.into(),
        shape: vec![Dim::Named("batch".into()), second],
    };
    let seq = || Dim::Named("seq".into());
    Manifest {
        name: name.into(),
        version: String::new(),
        created_at: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        description: description.into(),
        inputs: vec![
            spec("input_ids", "int64", seq()),
            spec("attention_mask", "int64", seq()),
            spec("token_type_ids", "int64", seq()),
        ],
        outputs: vec![
            spec(
                "sentence_embedding",
                "float32",
                Dim::Fixed(shape.hidden as i64),
            ),
            spec("logits", "float32", Dim::Fixed(shape.classes as i64)),
            spec("probabilities", "float32", Dim::Fixed(shape.classes as i64)),
        ],
        labels: Some(labels.to_vec()),
        metrics,
        profile: None,
    }
}

/// Where a version keeps its tokenizer.
pub(crate) fn tokenizer_file(version_dir: &Path) -> PathBuf {
    version_dir.join("tokenizer.json")
}

/// A classifier run's `probabilities` output, row-major.
pub(crate) fn probabilities<'a>(
    outputs: &'a ort::session::SessionOutputs<'_>,
    model: &Path,
) -> Result<&'a [f32], ModelError> {
    let value = outputs
        .get("probabilities")
        .ok_or_else(|| ModelError::Incompatible {
            path: model.to_owned(),
            message: "the model has no `probabilities` output".into(),
        })?;
    let (_, data) = value
        .try_extract_tensor::<f32>()
        .map_err(|e| ModelError::Load {
            path: model.to_owned(),
            message: e.to_string(),
        })?;
    Ok(data)
}

#[cfg(test)]
mod tests {
    use super::bert::tests::tiny;
    use super::*;

    #[test]
    fn batches_cover_every_row_once_and_group_by_length() {
        let lengths: Vec<usize> = (0..1000).map(|i| (i * 37) % 97 + 1).collect();
        let mut rng = StdRng::seed_from_u64(1);
        for batches in [
            batches(&lengths, 16, Some(&mut rng)),
            batches(&lengths, 16, None),
        ] {
            let mut seen: Vec<usize> = batches.iter().flatten().copied().collect();
            seen.sort_unstable();
            assert_eq!(seen, (0..1000).collect::<Vec<_>>());
            assert!(batches.iter().all(|b| b.len() <= 16));
        }
        // Sorted within windows: a batch spans a small length range.
        let sorted = batches(&lengths, 16, None);
        let spread = |b: &Vec<usize>| {
            b.iter().map(|&i| lengths[i]).max().unwrap()
                - b.iter().map(|&i| lengths[i]).min().unwrap()
        };
        assert!(sorted.iter().all(|b| spread(b) <= 2));
    }

    #[test]
    fn the_schedule_warms_up_then_decays_to_zero() {
        let f: Vec<f64> = (0..10).map(|s| schedule(s, 10, 0.2)).collect();
        assert_eq!(f[0], 0.5);
        assert_eq!(f[1], 1.0);
        assert!(f.windows(2).skip(1).all(|w| w[1] <= w[0]));
        assert!(f[9] > 0.0 && f[9] <= 0.125 + 1e-12);
    }

    /// A task only the encoder can learn: the class is whether token 7 appears anywhere,
    /// among random tokens. Training must lower the loss well below chance (ln 2).
    #[test]
    fn fine_tuning_lowers_the_loss_on_a_learnable_task() {
        let mut rng = StdRng::seed_from_u64(3);
        let mut data = Tokenized::default();
        let mut labels = Vec::new();
        for i in 0..192 {
            let len = 4 + i % 6;
            let mut ids: Vec<u32> = (0..len)
                .map(|_| rand::Rng::random_range(&mut rng, 8..50))
                .collect();
            let positive = i % 2 == 0;
            if positive {
                let at = rand::Rng::random_range(&mut rng, 0..len);
                ids[at] = 7;
            }
            data.types.push(vec![0; len]);
            data.ids.push(ids);
            labels.push(usize::from(positive));
        }
        let model = Bert::random(tiny(2), 9);
        let trainer = TrainConfig {
            epochs: 12,
            batch_size: 16,
            learning_rate: 0.05,
            l2: 0.0,
            ..Default::default()
        };
        let fine = FineTuneConfig {
            encoder: "tiny".into(),
            max_len: 16,
            encoder_learning_rate: 3e-3,
            warmup: 0.1,
        };
        let losses = train(&model, &data, &labels, &trainer, &fine, |_, _| {}).unwrap();
        assert!(losses[0] > 0.6, "starts near chance: {losses:?}");
        assert!(
            *losses.last().unwrap() < 0.3,
            "the loss did not fall: {losses:?}"
        );
        let (probs, _) = predict(&model, &data).unwrap();
        let right = probs
            .chunks(2)
            .zip(&labels)
            .filter(|(p, &y)| usize::from(p[1] > p[0]) == y)
            .count();
        assert!(right as f64 / 192.0 > 0.9, "{right}/192 right");
    }
}

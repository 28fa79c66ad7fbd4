//! Training feed-forward classifiers on dense features: softmax (multinomial logistic)
//! regression when `hidden` is empty, a small ReLU MLP otherwise.
//!
//! Why not a crate: linfa's and smartcore's logistic regressions would pull in ndarray and
//! an optimizer framework to fit a model whose weights we then have to dig out again for
//! the ONNX export; the whole method here is a forward pass, its gradient and Adam, and the
//! trained layers are exactly what [`super::onnx_export`] writes. Features are
//! standardized with the training set's mean and standard deviation (folded into the ONNX
//! graph), the loss is cross-entropy with L2 on the weights, and mini-batches are shuffled
//! with a seeded RNG so a rerun gives the same model.

use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};

use super::onnx_export::{Classifier, Dense};
use crate::config::job::TrainConfig;

/// Rows of features (row-major `[rows, width]`) with class indices.
#[derive(Debug, Clone, Default)]
pub struct Examples {
    pub x: Vec<f32>,
    pub width: usize,
    pub y: Vec<usize>,
    /// The text of each row, when the job fine-tunes a text model (`x` is then empty).
    pub text: Vec<String>,
}

impl Examples {
    pub fn rows(&self) -> usize {
        self.y.len()
    }
    pub fn row(&self, i: usize) -> &[f32] {
        &self.x[i * self.width..(i + 1) * self.width]
    }
}

impl Classifier {
    /// Class probabilities for one row, computed the way the exported graph does.
    pub fn predict_proba(&self, row: &[f32]) -> Vec<f32> {
        let mut h: Vec<f32> = match &self.standardize {
            Some((mean, std)) => row
                .iter()
                .zip(mean)
                .zip(std)
                .map(|((v, m), s)| (v - m) / s)
                .collect(),
            None => row.to_vec(),
        };
        let last = self.layers.len().saturating_sub(1);
        for (k, layer) in self.layers.iter().enumerate() {
            let mut out = layer.bias.clone();
            for (i, v) in h.iter().enumerate() {
                let w = &layer.weight[i * layer.outputs..(i + 1) * layer.outputs];
                for (o, wv) in out.iter_mut().zip(w) {
                    *o += v * wv;
                }
            }
            if k != last {
                out.iter_mut().for_each(|v| *v = v.max(0.0));
            }
            h = out;
        }
        softmax(&mut h);
        h
    }
}

fn softmax(v: &mut [f32]) {
    let max = v.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut sum = 0.0;
    for x in v.iter_mut() {
        *x = (*x - max).exp();
        sum += *x;
    }
    v.iter_mut().for_each(|x| *x /= sum);
}

/// Adam state for one parameter vector.
struct Adam {
    m: Vec<f32>,
    v: Vec<f32>,
}

impl Adam {
    fn new(len: usize) -> Self {
        Adam {
            m: vec![0.0; len],
            v: vec![0.0; len],
        }
    }
    fn step(&mut self, params: &mut [f32], grad: &[f32], lr: f32, t: i32) {
        let (b1, b2, eps) = (0.9_f32, 0.999_f32, 1e-8_f32);
        let (c1, c2) = (1.0 - b1.powi(t), 1.0 - b2.powi(t));
        for i in 0..params.len() {
            self.m[i] = b1 * self.m[i] + (1.0 - b1) * grad[i];
            self.v[i] = b2 * self.v[i] + (1.0 - b2) * grad[i] * grad[i];
            params[i] -= lr * (self.m[i] / c1) / ((self.v[i] / c2).sqrt() + eps);
        }
    }
}

/// Trains a classifier; `on_epoch(epoch, mean_loss)` reports progress.
///
/// Long on purpose: the forward pass, its gradient and the Adam update of one training
/// loop, kept together so the maths can be checked in one place.
pub fn train(
    data: &Examples,
    labels: Vec<String>,
    input_name: &str,
    config: &TrainConfig,
    mut on_epoch: impl FnMut(usize, f32),
) -> Classifier {
    let classes = labels.len();
    let width = data.width;
    let standardize = config.standardize.then(|| {
        let n = data.rows().max(1) as f64;
        let mut mean = vec![0.0_f64; width];
        let mut var = vec![0.0_f64; width];
        for r in 0..data.rows() {
            for (m, v) in mean.iter_mut().zip(data.row(r)) {
                *m += f64::from(*v) / n;
            }
        }
        for r in 0..data.rows() {
            for ((s, v), m) in var.iter_mut().zip(data.row(r)).zip(&mean) {
                *s += (f64::from(*v) - m).powi(2) / n;
            }
        }
        let std: Vec<f32> = var.iter().map(|v| (v.sqrt() as f32).max(1e-6)).collect();
        (mean.iter().map(|m| *m as f32).collect::<Vec<f32>>(), std)
    });

    let mut rng = StdRng::seed_from_u64(config.seed);
    let mut sizes = vec![width];
    sizes.extend(&config.hidden);
    sizes.push(classes);
    let mut layers: Vec<Dense> = sizes
        .windows(2)
        .map(|w| {
            let scale = (2.0 / w[0] as f32).sqrt();
            Dense {
                inputs: w[0],
                outputs: w[1],
                weight: (0..w[0] * w[1])
                    .map(|_| rng.random_range(-1.0..1.0) * scale * 0.5)
                    .collect(),
                bias: vec![0.0; w[1]],
            }
        })
        .collect();
    let mut adam: Vec<(Adam, Adam)> = layers
        .iter()
        .map(|l| (Adam::new(l.weight.len()), Adam::new(l.bias.len())))
        .collect();

    let x: Vec<f32> = match &standardize {
        Some((mean, std)) => data
            .x
            .chunks(width.max(1))
            .flat_map(|row| row.iter().zip(mean).zip(std).map(|((v, m), s)| (v - m) / s))
            .collect(),
        None => data.x.clone(),
    };
    let mut order: Vec<usize> = (0..data.rows()).collect();
    let mut t = 0;
    for epoch in 0..config.epochs {
        order.shuffle(&mut rng);
        let mut total_loss = 0.0_f64;
        for batch in order.chunks(config.batch_size.max(1)) {
            t += 1;
            let mut grads: Vec<(Vec<f32>, Vec<f32>)> = layers
                .iter()
                .map(|l| (vec![0.0; l.weight.len()], vec![0.0; l.bias.len()]))
                .collect();
            for &r in batch {
                // Forward, keeping every layer's activations.
                let mut acts: Vec<Vec<f32>> = vec![x[r * width..(r + 1) * width].to_vec()];
                for (k, layer) in layers.iter().enumerate() {
                    let input = &acts[k];
                    let mut out = layer.bias.clone();
                    for (i, v) in input.iter().enumerate() {
                        if *v == 0.0 {
                            continue;
                        }
                        let w = &layer.weight[i * layer.outputs..(i + 1) * layer.outputs];
                        for (o, wv) in out.iter_mut().zip(w) {
                            *o += v * wv;
                        }
                    }
                    if k + 1 < layers.len() {
                        out.iter_mut().for_each(|v| *v = v.max(0.0));
                    }
                    acts.push(out);
                }
                let mut delta = acts.pop().unwrap_or_default();
                softmax(&mut delta);
                total_loss -= f64::from(delta[data.y[r]].max(1e-12).ln());
                delta[data.y[r]] -= 1.0;
                // Backward.
                for k in (0..layers.len()).rev() {
                    let layer = &layers[k];
                    let input = &acts[k];
                    let (gw, gb) = &mut grads[k];
                    for (g, d) in gb.iter_mut().zip(&delta) {
                        *g += d;
                    }
                    for (i, v) in input.iter().enumerate() {
                        if *v == 0.0 {
                            continue;
                        }
                        for (g, d) in gw[i * layer.outputs..(i + 1) * layer.outputs]
                            .iter_mut()
                            .zip(&delta)
                        {
                            *g += v * d;
                        }
                    }
                    if k > 0 {
                        let mut back = vec![0.0_f32; layer.inputs];
                        for (i, b) in back.iter_mut().enumerate() {
                            if input[i] > 0.0 {
                                let w = &layer.weight[i * layer.outputs..(i + 1) * layer.outputs];
                                *b = w.iter().zip(&delta).map(|(w, d)| w * d).sum();
                            }
                        }
                        delta = back;
                    }
                }
            }
            let n = batch.len() as f32;
            for ((layer, (gw, gb)), (aw, ab)) in layers.iter_mut().zip(&mut grads).zip(&mut adam) {
                for (g, w) in gw.iter_mut().zip(&layer.weight) {
                    *g = *g / n + config.l2 * w;
                }
                gb.iter_mut().for_each(|g| *g /= n);
                aw.step(&mut layer.weight, gw, config.learning_rate, t);
                ab.step(&mut layer.bias, gb, config.learning_rate, t);
            }
        }
        on_epoch(epoch, (total_loss / data.rows().max(1) as f64) as f32);
    }
    Classifier {
        input_name: input_name.into(),
        standardize,
        layers,
        labels,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two Gaussian blobs per class layout: linearly separable for softmax regression, and
    /// an XOR layout that only the MLP can fit.
    fn blobs(xor: bool) -> Examples {
        let mut rng = StdRng::seed_from_u64(1);
        let mut data = Examples {
            width: 2,
            ..Default::default()
        };
        for i in 0..800 {
            let (a, b) = (i % 2 == 0, (i / 2) % 2 == 0);
            let cx = if a { 2.0 } else { -2.0 };
            let cy = if b { 2.0 } else { -2.0 };
            data.x.push(cx + rng.random_range(-1.0..1.0));
            data.x.push(cy + rng.random_range(-1.0..1.0));
            data.y.push(if xor {
                usize::from(a != b)
            } else {
                usize::from(a)
            });
        }
        data
    }

    fn accuracy(model: &Classifier, data: &Examples) -> f32 {
        let right = (0..data.rows())
            .filter(|&r| {
                let p = model.predict_proba(data.row(r));
                let best = if p[1] > p[0] { 1 } else { 0 };
                best == data.y[r]
            })
            .count();
        right as f32 / data.rows() as f32
    }

    #[test]
    fn softmax_regression_separates_separable_classes() {
        let data = blobs(false);
        let model = train(
            &data,
            vec!["a".into(), "b".into()],
            "x",
            &TrainConfig::default(),
            |_, _| {},
        );
        assert!(accuracy(&model, &data) > 0.99);
        let p = model.predict_proba(data.row(0));
        assert!((p.iter().sum::<f32>() - 1.0).abs() < 1e-5);
    }

    #[test]
    fn the_mlp_fits_xor_which_a_linear_model_cannot() {
        let data = blobs(true);
        let linear = train(
            &data,
            vec!["a".into(), "b".into()],
            "x",
            &TrainConfig::default(),
            |_, _| {},
        );
        assert!(accuracy(&linear, &data) < 0.8);
        let config = TrainConfig {
            hidden: vec![16],
            epochs: 80,
            ..Default::default()
        };
        let mut losses = Vec::new();
        let mlp = train(
            &data,
            vec!["a".into(), "b".into()],
            "x",
            &config,
            |_, loss| losses.push(loss),
        );
        assert!(accuracy(&mlp, &data) > 0.97, "{}", accuracy(&mlp, &data));
        assert!(losses.last() < losses.first(), "{losses:?}");
    }
}

//! The fine-tuning trainer's model: a BERT encoder (embeddings, post-LayerNorm layers,
//! mean pooling, L2 normalisation, as `scripts/models/build_encoder.py` exports
//! all-MiniLM-L6-v2) with a linear softmax head, written in candle so that every weight
//! gets a gradient.
//!
//! Parameters are kept by the names of the encoder ONNX initializers, dense weights as
//! `[in, out]` (`*.weight_t`), so reading a served encoder and exporting a trained one are
//! a lookup by name (see `super::onnx`). The forward pass computes what that graph
//! computes, op by op, so the exported model matches the trainer to float rounding.

use std::collections::BTreeMap;

use candle_core::{DType, Device, Tensor, Var, D};

/// The sizes of a BERT encoder and its head.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct BertShape {
    pub vocab: usize,
    pub hidden: usize,
    pub layers: usize,
    pub heads: usize,
    pub intermediate: usize,
    pub positions: usize,
    pub token_types: usize,
    pub classes: usize,
    pub eps: f32,
}

impl BertShape {
    pub(crate) fn head_dim(&self) -> usize {
        self.hidden / self.heads.max(1)
    }

    /// Every trainable parameter: its name and shape, in export order.
    pub(crate) fn parameters(&self) -> Vec<(String, Vec<usize>)> {
        let h = self.hidden;
        let mut out = vec![
            ("word_embeddings".to_owned(), vec![self.vocab, h]),
            ("position_embeddings".to_owned(), vec![self.positions, h]),
            (
                "token_type_embeddings".to_owned(),
                vec![self.token_types, h],
            ),
            ("embeddings.LayerNorm.weight".to_owned(), vec![h]),
            ("embeddings.LayerNorm.bias".to_owned(), vec![h]),
        ];
        for i in 0..self.layers {
            let p = format!("encoder.layer.{i}.");
            let dense = |out: &mut Vec<(String, Vec<usize>)>, name: &str, din: usize, dout| {
                out.push((format!("{p}{name}.weight_t"), vec![din, dout]));
                out.push((format!("{p}{name}.bias"), vec![dout]));
            };
            let norm = |out: &mut Vec<(String, Vec<usize>)>, name: &str| {
                out.push((format!("{p}{name}.weight"), vec![h]));
                out.push((format!("{p}{name}.bias"), vec![h]));
            };
            dense(&mut out, "attention.self.query", h, h);
            dense(&mut out, "attention.self.key", h, h);
            dense(&mut out, "attention.self.value", h, h);
            dense(&mut out, "attention.output.dense", h, h);
            norm(&mut out, "attention.output.LayerNorm");
            dense(&mut out, "intermediate.dense", h, self.intermediate);
            dense(&mut out, "output.dense", self.intermediate, h);
            norm(&mut out, "output.LayerNorm");
        }
        out.push((HEAD_WEIGHT.to_owned(), vec![h, self.classes]));
        out.push((HEAD_BIAS.to_owned(), vec![self.classes]));
        out
    }
}

pub(crate) const HEAD_WEIGHT: &str = "head.weight_t";
pub(crate) const HEAD_BIAS: &str = "head.bias";

/// A parameter's current values.
pub(crate) struct NamedValues {
    pub name: String,
    pub dims: Vec<usize>,
    pub data: Vec<f32>,
}

/// One padded batch of token ids: `[rows, seq]` each.
pub(crate) struct TokenBatch {
    pub ids: Tensor,
    pub types: Tensor,
    pub mask: Tensor,
}

impl TokenBatch {
    /// Pads `rows` (ids, type ids) to the longest with zeros.
    pub(crate) fn new(rows: &[(&[u32], &[u32])], device: &Device) -> candle_core::Result<Self> {
        let seq = rows
            .iter()
            .map(|(ids, _)| ids.len())
            .max()
            .unwrap_or(0)
            .max(1);
        let n = rows.len();
        let mut ids = vec![0_u32; n * seq];
        let mut types = vec![0_u32; n * seq];
        let mut mask = vec![0_f32; n * seq];
        for (r, (row_ids, row_types)) in rows.iter().enumerate() {
            let at = r * seq;
            ids[at..at + row_ids.len()].copy_from_slice(row_ids);
            types[at..at + row_types.len()].copy_from_slice(row_types);
            mask[at..at + row_ids.len()].fill(1.0);
        }
        Ok(TokenBatch {
            ids: Tensor::from_vec(ids, (n, seq), device)?,
            types: Tensor::from_vec(types, (n, seq), device)?,
            mask: Tensor::from_vec(mask, (n, seq), device)?,
        })
    }
}

/// The encoder and head, every parameter a [`Var`].
pub(crate) struct Bert {
    pub shape: BertShape,
    params: BTreeMap<String, Var>,
}

impl Bert {
    /// From named values (row-major, `f32`), which must cover [`BertShape::parameters`].
    pub(crate) fn from_values(
        shape: BertShape,
        mut values: BTreeMap<String, Vec<f32>>,
        device: &Device,
    ) -> Result<Self, String> {
        let mut params = BTreeMap::new();
        for (name, dims) in shape.parameters() {
            let data = values
                .remove(&name)
                .ok_or_else(|| format!("no weights for `{name}`"))?;
            let expected: usize = dims.iter().product();
            if data.len() != expected {
                return Err(format!(
                    "`{name}` has {} values, expected {dims:?} = {expected}",
                    data.len()
                ));
            }
            let tensor = Tensor::from_vec(data, dims, device).map_err(|e| e.to_string())?;
            params.insert(name, Var::from_tensor(&tensor).map_err(|e| e.to_string())?);
        }
        Ok(Bert { shape, params })
    }

    /// Random weights as BERT initialises them (normal, std 0.02; LayerNorm 1 and 0), a
    /// zero head. For tests.
    #[cfg(test)]
    pub(crate) fn random(shape: BertShape, seed: u64) -> Self {
        use rand::SeedableRng;
        use rand_distr::Distribution;
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let normal = rand_distr::Normal::new(0.0_f32, 0.02).unwrap_or_else(|_| unreachable!());
        let values = shape
            .parameters()
            .into_iter()
            .map(|(name, dims)| {
                let n: usize = dims.iter().product();
                let data = if name.starts_with("head.") || name.ends_with(".bias") {
                    vec![0.0; n]
                } else if name.ends_with("LayerNorm.weight") {
                    vec![1.0; n]
                } else {
                    (0..n).map(|_| normal.sample(&mut rng)).collect()
                };
                (name, data)
            })
            .collect();
        match Bert::from_values(shape, values, &Device::Cpu) {
            Ok(bert) => bert,
            Err(message) => unreachable!("parameters() covers itself: {message}"),
        }
    }

    fn p(&self, name: &str) -> candle_core::Result<&Tensor> {
        self.params
            .get(name)
            .map(Var::as_tensor)
            .ok_or_else(|| candle_core::Error::Msg(format!("no parameter `{name}`")))
    }

    /// All parameters, split into (encoder, head).
    pub(crate) fn vars(&self) -> (Vec<Var>, Vec<Var>) {
        let (head, encoder): (Vec<_>, Vec<_>) = self
            .params
            .iter()
            .partition(|(name, _)| name.starts_with("head."));
        let vars = |v: Vec<(&String, &Var)>| v.into_iter().map(|(_, v)| v.clone()).collect();
        (vars(encoder), vars(head))
    }

    /// Current values by name (row-major), for export.
    pub(crate) fn values(&self) -> candle_core::Result<Vec<NamedValues>> {
        self.params
            .iter()
            .map(|(name, var)| {
                let t = var.as_tensor();
                Ok(NamedValues {
                    name: name.clone(),
                    dims: t.dims().to_vec(),
                    data: t.flatten_all()?.to_vec1::<f32>()?,
                })
            })
            .collect()
    }

    /// Sentence embeddings `[rows, hidden]` (unit length) and logits `[rows, classes]`.
    pub(crate) fn forward(&self, batch: &TokenBatch) -> candle_core::Result<(Tensor, Tensor)> {
        let s = self.shape;
        let (rows, seq) = batch.ids.dims2()?;
        let h = s.hidden;
        let word = self
            .p("word_embeddings")?
            .embedding(&batch.ids.flatten_all()?)?
            .reshape((rows, seq, h))?;
        let position = self.p("position_embeddings")?.narrow(0, 0, seq)?;
        let token_type = self
            .p("token_type_embeddings")?
            .embedding(&batch.types.flatten_all()?)?
            .reshape((rows, seq, h))?;
        let x = word.broadcast_add(&position)?.add(&token_type)?;
        let mut x = self
            .layer_norm(&x, "embeddings.LayerNorm")?
            .reshape((rows * seq, h))?;
        // 0 for real tokens, -10000 for padding: [rows, 1, 1, seq].
        let bias = batch
            .mask
            .affine(10_000.0, -10_000.0)?
            .reshape((rows, 1, 1, seq))?;
        let scale = 1.0 / (s.head_dim() as f64).sqrt();
        for i in 0..s.layers {
            let p = format!("encoder.layer.{i}.");
            let heads = |t: Tensor| -> candle_core::Result<Tensor> {
                t.reshape((rows, seq, s.heads, s.head_dim()))?
                    .transpose(1, 2)?
                    .contiguous()
            };
            let q = heads(self.dense(&x, &format!("{p}attention.self.query"))?)?;
            let k = heads(self.dense(&x, &format!("{p}attention.self.key"))?)?;
            let v = heads(self.dense(&x, &format!("{p}attention.self.value"))?)?;
            let scores = q
                .matmul(&k.t()?.contiguous()?)?
                .affine(scale, 0.0)?
                .broadcast_add(&bias)?;
            let probs = candle_nn::ops::softmax(&scores, D::Minus1)?;
            let context = probs
                .matmul(&v)?
                .transpose(1, 2)?
                .contiguous()?
                .reshape((rows * seq, h))?;
            let attended = self
                .dense(&context, &format!("{p}attention.output.dense"))?
                .add(&x)?;
            x = self.layer_norm(&attended, &format!("{p}attention.output.LayerNorm"))?;
            let inner = self
                .dense(&x, &format!("{p}intermediate.dense"))?
                .gelu_erf()?;
            let out = self.dense(&inner, &format!("{p}output.dense"))?.add(&x)?;
            x = self.layer_norm(&out, &format!("{p}output.LayerNorm"))?;
        }
        // Mean over real tokens, then unit length.
        let x = x.reshape((rows, seq, h))?;
        let m = batch.mask.unsqueeze(2)?;
        let summed = x.broadcast_mul(&m)?.sum(1)?;
        let count = m.sum(1)?.maximum(1e-9)?;
        let pooled = summed.broadcast_div(&count)?;
        let norm = pooled.sqr()?.sum_keepdim(1)?.sqrt()?.maximum(1e-12)?;
        let embedding = pooled.broadcast_div(&norm)?;
        let logits = embedding
            .matmul(self.p(HEAD_WEIGHT)?)?
            .broadcast_add(self.p(HEAD_BIAS)?)?;
        Ok((embedding, logits))
    }

    fn dense(&self, x: &Tensor, prefix: &str) -> candle_core::Result<Tensor> {
        x.matmul(self.p(&format!("{prefix}.weight_t"))?)?
            .broadcast_add(self.p(&format!("{prefix}.bias"))?)
    }

    fn layer_norm(&self, x: &Tensor, prefix: &str) -> candle_core::Result<Tensor> {
        let mean = x.mean_keepdim(D::Minus1)?;
        let centred = x.broadcast_sub(&mean)?;
        let var = centred.sqr()?.mean_keepdim(D::Minus1)?;
        let normed = centred.broadcast_div(&var.affine(1.0, f64::from(self.shape.eps))?.sqrt()?)?;
        normed
            .broadcast_mul(self.p(&format!("{prefix}.weight"))?)?
            .broadcast_add(self.p(&format!("{prefix}.bias"))?)
    }
}

/// Class probabilities from logits.
pub(crate) fn softmax(logits: &Tensor) -> candle_core::Result<Tensor> {
    candle_nn::ops::softmax(logits, D::Minus1)
}

/// Mean cross-entropy of `logits` against class indices.
pub(crate) fn loss(logits: &Tensor, labels: &[u32]) -> candle_core::Result<Tensor> {
    let target = Tensor::from_slice(labels, labels.len(), logits.device())?;
    candle_nn::loss::cross_entropy(&logits.to_dtype(DType::F32)?, &target)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn tiny(classes: usize) -> BertShape {
        BertShape {
            vocab: 50,
            hidden: 16,
            layers: 2,
            heads: 4,
            intermediate: 32,
            positions: 32,
            token_types: 2,
            classes,
            eps: 1e-12,
        }
    }

    #[test]
    fn padding_does_not_change_a_rows_embedding() {
        let bert = Bert::random(tiny(2), 3);
        let row: (&[u32], &[u32]) = (&[1, 7, 9, 2], &[0, 0, 0, 0]);
        let long: (&[u32], &[u32]) = (&[1, 4, 5, 6, 8, 3, 2], &[0; 7]);
        let alone = TokenBatch::new(&[row], &Device::Cpu).unwrap();
        let padded = TokenBatch::new(&[row, long], &Device::Cpu).unwrap();
        let (a, _) = bert.forward(&alone).unwrap();
        let (b, _) = bert.forward(&padded).unwrap();
        let a = a.to_vec2::<f32>().unwrap();
        let b = b.to_vec2::<f32>().unwrap();
        let diff = a[0]
            .iter()
            .zip(&b[0])
            .map(|(x, y)| (x - y).abs())
            .fold(0.0, f32::max);
        assert!(diff < 1e-5, "padding changed the embedding by {diff}");
        let norm: f32 = a[0].iter().map(|v| v * v).sum::<f32>().sqrt();
        assert!((norm - 1.0).abs() < 1e-5, "embedding norm {norm}");
    }

    #[test]
    fn every_parameter_gets_a_gradient() {
        let bert = Bert::random(tiny(2), 5);
        let batch = TokenBatch::new(
            &[(&[1, 3, 4, 2], &[0; 4]), (&[1, 9, 2], &[0, 1, 1])],
            &Device::Cpu,
        )
        .unwrap();
        let (_, logits) = bert.forward(&batch).unwrap();
        let grads = loss(&logits, &[0, 1]).unwrap().backward().unwrap();
        let (encoder, head) = bert.vars();
        for var in encoder.iter().chain(&head) {
            assert!(
                grads.get(var.as_tensor()).is_some(),
                "a parameter has no gradient"
            );
        }
    }
}

//! Reading a BERT encoder's weights out of an ONNX file, and writing a trained encoder +
//! head back as one ONNX model from token ids to probabilities.
//!
//! The graph written is the one `scripts/models/build_encoder.py` builds (same ops, same
//! initializer names), with a head after the sentence embedding:
//!
//! ```text
//! input_ids, attention_mask, token_type_ids (int64 [batch, seq])
//!   -> embeddings + LayerNorm -> N x (self-attention, LayerNorm, GELU FFN, LayerNorm)
//!   -> mean pooling over real tokens -> L2 normalisation = sentence_embedding [batch, hidden]
//!   -> MatMul + Add = logits -> Softmax = probabilities [batch, classes]
//! ```
//!
//! Reading takes the initializers by name, so it accepts both that script's encoder (no
//! head: the head starts at zero) and a model this module wrote (fine-tuning again).

use std::collections::BTreeMap;

use prost::Message;

use super::bert::{BertShape, NamedValues, HEAD_BIAS, HEAD_WEIGHT};
use crate::retrain::onnx_export::{node, value_info_dims};
use crate::retrain::onnx_proto::{
    AttributeProto, DimensionValue, GraphProto, ModelProto, NodeProto, OperatorSetIdProto,
    TensorProto, ATTRIBUTE_FLOAT, ATTRIBUTE_INT, ATTRIBUTE_INTS, FLOAT, INT64,
};

/// The named float initializers of an encoder and the shape they imply.
pub(crate) struct EncoderWeights {
    pub shape: BertShape,
    pub values: BTreeMap<String, Vec<f32>>,
}

/// Reads the weights of a BERT encoder exported as `build_encoder.py` (or [`export`]) does.
/// `classes` sizes the head; a head already in the file is kept when its size matches.
pub(crate) fn read(bytes: &[u8], classes: usize) -> Result<EncoderWeights, String> {
    let model = ModelProto::decode(bytes).map_err(|e| format!("not an ONNX model: {e}"))?;
    let graph = model.graph.ok_or("the ONNX model has no graph")?;
    let mut floats = BTreeMap::new();
    let mut ints = BTreeMap::new();
    for tensor in &graph.initializer {
        match tensor.data_type {
            FLOAT => {
                floats.insert(
                    tensor.name.clone(),
                    (tensor.dims.clone(), float_values(tensor)?),
                );
            }
            INT64 => {
                ints.insert(tensor.name.clone(), int_values(tensor)?);
            }
            _ => {}
        }
    }
    let dims = |name: &str| -> Result<Vec<usize>, String> {
        floats
            .get(name)
            .map(|(dims, _)| dims.iter().map(|&d| d.max(0) as usize).collect())
            .ok_or_else(|| {
                format!("no initializer `{name}`: not a BERT encoder as scripts/models/build_encoder.py exports")
            })
    };
    let word = dims("word_embeddings")?;
    let layers = (0..)
        .take_while(|i| {
            floats.contains_key(&format!("encoder.layer.{i}.attention.self.query.weight_t"))
        })
        .count();
    let heads = ints
        .get("heads_shape")
        .and_then(|v| v.get(2).copied())
        .ok_or("no initializer `heads_shape` [0, 0, heads, head_dim]")?;
    let eps = graph
        .node
        .iter()
        .find(|n| n.op_type == "LayerNormalization")
        .and_then(|n| n.attribute.iter().find(|a| a.name == "epsilon"))
        .map_or(1e-5, |a| a.f);
    let intermediate = dims("encoder.layer.0.intermediate.dense.weight_t")?;
    let shape = BertShape {
        vocab: word[0],
        hidden: word.get(1).copied().unwrap_or(0),
        layers,
        heads: heads.max(1) as usize,
        intermediate: intermediate.get(1).copied().unwrap_or(0),
        positions: dims("position_embeddings")?[0],
        token_types: dims("token_type_embeddings")?[0],
        classes,
        eps,
    };
    if layers == 0 || shape.hidden == 0 || !shape.hidden.is_multiple_of(shape.heads) {
        return Err(format!("not a usable BERT encoder: {shape:?}"));
    }
    let mut values: BTreeMap<String, Vec<f32>> = floats
        .into_iter()
        .map(|(name, (_, data))| (name, data))
        .collect();
    let head_fits = values.get(HEAD_WEIGHT).map(Vec::len) == Some(shape.hidden * classes)
        && values.get(HEAD_BIAS).map(Vec::len) == Some(classes);
    if !head_fits {
        values.insert(HEAD_WEIGHT.into(), vec![0.0; shape.hidden * classes]);
        values.insert(HEAD_BIAS.into(), vec![0.0; classes]);
    }
    Ok(EncoderWeights { shape, values })
}

fn float_values(tensor: &TensorProto) -> Result<Vec<f32>, String> {
    if !tensor.raw_data.is_empty() {
        if !tensor.raw_data.len().is_multiple_of(4) {
            return Err(format!("`{}`: raw data is not float32", tensor.name));
        }
        return Ok(tensor
            .raw_data
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect());
    }
    Ok(tensor.float_data.clone())
}

fn int_values(tensor: &TensorProto) -> Result<Vec<i64>, String> {
    if !tensor.raw_data.is_empty() {
        if !tensor.raw_data.len().is_multiple_of(8) {
            return Err(format!("`{}`: raw data is not int64", tensor.name));
        }
        return Ok(tensor
            .raw_data
            .chunks_exact(8)
            .map(|b| i64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]))
            .collect());
    }
    Ok(tensor.int64_data.clone())
}

/// Builds the graph, naming intermediate values in order.
#[derive(Default)]
struct Graph {
    nodes: Vec<NodeProto>,
    inits: Vec<TensorProto>,
    count: usize,
}

impl Graph {
    fn floats(&mut self, name: &str, dims: &[usize], data: &[f32]) -> String {
        self.inits.push(TensorProto {
            dims: dims.iter().map(|&d| d as i64).collect(),
            data_type: FLOAT,
            name: name.into(),
            raw_data: little_endian(data),
            ..Default::default()
        });
        name.into()
    }

    fn scalar(&mut self, name: &str, value: f32) -> String {
        self.floats(name, &[], &[value])
    }

    fn ints(&mut self, name: &str, data: &[i64]) -> String {
        self.inits.push(TensorProto {
            dims: vec![data.len() as i64],
            data_type: INT64,
            name: name.into(),
            int64_data: data.to_vec(),
            ..Default::default()
        });
        name.into()
    }

    /// A 0-d int64 constant (an index or a Range bound).
    fn int_scalar(&mut self, name: &str, value: i64) -> String {
        self.inits.push(TensorProto {
            data_type: INT64,
            name: name.into(),
            int64_data: vec![value],
            ..Default::default()
        });
        name.into()
    }

    fn op(&mut self, op: &str, inputs: &[&str], attributes: Vec<AttributeProto>) -> String {
        self.count += 1;
        let out = format!("{}_{}", op.to_lowercase(), self.count);
        self.nodes.push(node(op, inputs, &out, attributes));
        out
    }

    fn dense(&mut self, x: &str, prefix: &str) -> String {
        let product = self.op("MatMul", &[x, &format!("{prefix}.weight_t")], vec![]);
        self.op("Add", &[&product, &format!("{prefix}.bias")], vec![])
    }

    fn layer_norm(&mut self, x: &str, prefix: &str, eps: f32) -> String {
        let weight = format!("{prefix}.weight");
        let bias = format!("{prefix}.bias");
        self.op(
            "LayerNormalization",
            &[x, &weight, &bias],
            vec![int("axis", -1), float("epsilon", eps)],
        )
    }
}

fn little_endian(data: &[f32]) -> Vec<u8> {
    let mut raw = Vec::with_capacity(data.len() * 4);
    for v in data {
        raw.extend_from_slice(&v.to_le_bytes());
    }
    raw
}

fn int(name: &str, i: i64) -> AttributeProto {
    AttributeProto {
        name: name.into(),
        i,
        r#type: ATTRIBUTE_INT,
        ..Default::default()
    }
}

fn ints(name: &str, ints: &[i64]) -> AttributeProto {
    AttributeProto {
        name: name.into(),
        ints: ints.to_vec(),
        r#type: ATTRIBUTE_INTS,
        ..Default::default()
    }
}

fn float(name: &str, f: f32) -> AttributeProto {
    AttributeProto {
        name: name.into(),
        f,
        r#type: ATTRIBUTE_FLOAT,
        ..Default::default()
    }
}

/// The ONNX model (opset 17) of an encoder + head with the given parameter values
/// (as [`super::bert::Bert::values`] returns them).
pub(crate) fn export(shape: &BertShape, values: &[NamedValues], graph_name: &str) -> Vec<u8> {
    let mut g = Graph::default();
    for v in values {
        g.floats(&v.name, &v.dims, &v.data);
    }
    let heads_shape = g.ints(
        "heads_shape",
        &[0, 0, shape.heads as i64, shape.head_dim() as i64],
    );
    let hidden_shape = g.ints("hidden_shape", &[0, 0, shape.hidden as i64]);
    let one = g.scalar("one", 1.0);
    let scale = g.scalar("scale", 1.0 / (shape.head_dim() as f32).sqrt());

    let word = g.op("Gather", &["word_embeddings", "input_ids"], vec![]);
    let ids_shape = g.op("Shape", &["input_ids"], vec![]);
    let axis1 = g.int_scalar("axis1", 1);
    let seq_len = g.op("Gather", &[&ids_shape, &axis1], vec![]);
    let zero = g.int_scalar("zero_i64", 0);
    let one_i = g.int_scalar("one_i64", 1);
    let positions = g.op("Range", &[&zero, &seq_len, &one_i], vec![]);
    let position = g.op("Gather", &["position_embeddings", &positions], vec![]);
    let token_type = g.op(
        "Gather",
        &["token_type_embeddings", "token_type_ids"],
        vec![],
    );
    let sum = g.op("Add", &[&word, &position], vec![]);
    let sum = g.op("Add", &[&sum, &token_type], vec![]);
    let mut x = g.layer_norm(&sum, "embeddings.LayerNorm", shape.eps);

    let mask = g.op(
        "Cast",
        &["attention_mask"],
        vec![int("to", i64::from(FLOAT))],
    );
    let neg = g.scalar("neg", -10_000.0);
    let inverted = g.op("Sub", &[&one, &mask], vec![]);
    let bias = g.op("Mul", &[&inverted, &neg], vec![]);
    let axes12 = g.ints("axes12", &[1, 2]);
    let bias = g.op("Unsqueeze", &[&bias, &axes12], vec![]);
    let half = g.scalar("half", 0.5);
    let sqrt2 = g.scalar("sqrt2", std::f32::consts::SQRT_2);

    for i in 0..shape.layers {
        let p = format!("encoder.layer.{i}.");
        let heads = |g: &mut Graph, t: &str, perm: &[i64]| {
            let r = g.op("Reshape", &[t, &heads_shape], vec![]);
            g.op("Transpose", &[&r], vec![ints("perm", perm)])
        };
        let q = g.dense(&x, &format!("{p}attention.self.query"));
        let q = heads(&mut g, &q, &[0, 2, 1, 3]);
        let k = g.dense(&x, &format!("{p}attention.self.key"));
        let k = heads(&mut g, &k, &[0, 2, 3, 1]);
        let v = g.dense(&x, &format!("{p}attention.self.value"));
        let v = heads(&mut g, &v, &[0, 2, 1, 3]);
        let scores = g.op("MatMul", &[&q, &k], vec![]);
        let scores = g.op("Mul", &[&scores, &scale], vec![]);
        let scores = g.op("Add", &[&scores, &bias], vec![]);
        let probs = g.op("Softmax", &[&scores], vec![int("axis", -1)]);
        let context = g.op("MatMul", &[&probs, &v], vec![]);
        let context = g.op("Transpose", &[&context], vec![ints("perm", &[0, 2, 1, 3])]);
        let context = g.op("Reshape", &[&context, &hidden_shape], vec![]);
        let attended = g.dense(&context, &format!("{p}attention.output.dense"));
        let attended = g.op("Add", &[&attended, &x], vec![]);
        x = g.layer_norm(
            &attended,
            &format!("{p}attention.output.LayerNorm"),
            shape.eps,
        );
        let inner = g.dense(&x, &format!("{p}intermediate.dense"));
        let scaled = g.op("Div", &[&inner, &sqrt2], vec![]);
        let erf = g.op("Erf", &[&scaled], vec![]);
        let erf = g.op("Add", &[&one, &erf], vec![]);
        let halved = g.op("Mul", &[&inner, &half], vec![]);
        let gelu = g.op("Mul", &[&halved, &erf], vec![]);
        let out = g.dense(&gelu, &format!("{p}output.dense"));
        let out = g.op("Add", &[&out, &x], vec![]);
        x = g.layer_norm(&out, &format!("{p}output.LayerNorm"), shape.eps);
    }

    let axis2 = g.ints("axis2", &[2]);
    let m = g.op("Unsqueeze", &[&mask, &axis2], vec![]);
    let masked = g.op("Mul", &[&x, &m], vec![]);
    let axes1 = g.ints("axes1", &[1]);
    let summed = g.op("ReduceSum", &[&masked, &axes1], vec![int("keepdims", 0)]);
    let count = g.op("ReduceSum", &[&m, &axes1], vec![int("keepdims", 0)]);
    let min_count = g.scalar("min_count", 1e-9);
    let count = g.op("Max", &[&count, &min_count], vec![]);
    let pooled = g.op("Div", &[&summed, &count], vec![]);
    let norm = g.op(
        "ReduceL2",
        &[&pooled],
        vec![ints("axes", &[1]), int("keepdims", 1)],
    );
    let min_norm = g.scalar("min_norm", 1e-12);
    let norm = g.op("Max", &[&norm, &min_norm], vec![]);
    g.nodes
        .push(node("Div", &[&pooled, &norm], "sentence_embedding", vec![]));
    let logits = g.op("MatMul", &["sentence_embedding", HEAD_WEIGHT], vec![]);
    g.nodes
        .push(node("Add", &[&logits, HEAD_BIAS], "logits", vec![]));
    g.nodes.push(node(
        "Softmax",
        &["logits"],
        "probabilities",
        vec![int("axis", -1)],
    ));

    let batch_seq = [
        DimensionValue::Named("batch".into()),
        DimensionValue::Named("seq".into()),
    ];
    let per_row = |width: usize| {
        [
            DimensionValue::Named("batch".into()),
            DimensionValue::Fixed(width as i64),
        ]
    };
    let model = ModelProto {
        ir_version: 8,
        producer_name: "sluice retrain (fine_tune)".into(),
        producer_version: env!("CARGO_PKG_VERSION").into(),
        model_version: 1,
        doc_string: String::new(),
        graph: Some(GraphProto {
            node: g.nodes,
            name: graph_name.into(),
            initializer: g.inits,
            input: ["input_ids", "attention_mask", "token_type_ids"]
                .iter()
                .map(|name| value_info_dims(name, INT64, &batch_seq))
                .collect(),
            output: vec![
                value_info_dims("sentence_embedding", FLOAT, &per_row(shape.hidden)),
                value_info_dims("logits", FLOAT, &per_row(shape.classes)),
                value_info_dims("probabilities", FLOAT, &per_row(shape.classes)),
            ],
        }),
        opset_import: vec![OperatorSetIdProto {
            domain: String::new(),
            version: 17,
        }],
        metadata_props: Vec::new(),
    };
    model.encode_to_vec()
}

#[cfg(test)]
mod tests {
    use super::super::bert::tests::tiny;
    use super::super::bert::Bert;
    use super::*;

    #[test]
    fn an_exported_model_reads_back_to_the_same_shape_and_weights() {
        let bert = Bert::random(tiny(3), 11);
        let values = bert.values().unwrap();
        let bytes = export(&bert.shape, &values, "tiny");
        let read = read(&bytes, 3).unwrap();
        assert_eq!(read.shape, bert.shape);
        for v in &values {
            assert_eq!(read.values.get(&v.name), Some(&v.data), "{}", v.name);
        }
        // Another class count: the encoder is kept, the head starts again at zero.
        let other = super::read(&bytes, 2).unwrap();
        assert_eq!(other.values[HEAD_WEIGHT], vec![0.0; 16 * 2]);
        assert!(super::read(b"not onnx", 2).is_err());
    }
}

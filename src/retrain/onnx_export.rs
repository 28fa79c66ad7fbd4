//! Trained models -> ONNX files that ONNX Runtime loads.
//!
//! A classifier is a chain of dense layers over a `[batch, n]` float input: standardization
//! is folded into the first layer's weights (`W' = W / std`, `b' = b - (mean / std) W`), hidden
//! layers use ReLU, and the graph ends in `logits` and `probabilities` (Softmax). The class
//! labels go into the model's metadata (`labels`, a JSON array) and into the registry
//! manifest, which [`manifest`] builds from the same description.

use prost::Message;

use super::onnx_proto::*;
use crate::model::{Dim, Manifest, TensorSpec};

/// One dense layer: `y = x W + b`, `W` row-major `[inputs, outputs]`.
#[derive(Debug, Clone, PartialEq)]
pub struct Dense {
    pub inputs: usize,
    pub outputs: usize,
    pub weight: Vec<f32>,
    pub bias: Vec<f32>,
}

/// A feed-forward classifier as exported.
#[derive(Debug, Clone, PartialEq)]
pub struct Classifier {
    pub input_name: String,
    /// Per-feature mean and standard deviation applied before the first layer.
    pub standardize: Option<(Vec<f32>, Vec<f32>)>,
    /// Layers in order; ReLU between them.
    pub layers: Vec<Dense>,
    pub labels: Vec<String>,
}

impl Classifier {
    pub fn features(&self) -> usize {
        self.layers.first().map_or(0, |l| l.inputs)
    }

    pub fn classes(&self) -> usize {
        self.layers.last().map_or(0, |l| l.outputs)
    }

    /// The first layer with standardization folded in.
    fn folded_first(&self) -> Option<Dense> {
        let first = self.layers.first()?.clone();
        let Some((mean, std)) = &self.standardize else {
            return Some(first);
        };
        let mut folded = first.clone();
        for i in 0..first.inputs {
            let scale = 1.0 / std[i];
            for j in 0..first.outputs {
                let w = first.weight[i * first.outputs + j] * scale;
                folded.weight[i * first.outputs + j] = w;
                folded.bias[j] -= mean[i] * w;
            }
        }
        Some(folded)
    }

    /// The serialized ONNX model.
    pub fn to_onnx(&self, graph_name: &str) -> Vec<u8> {
        let mut nodes = Vec::new();
        let mut initializers = Vec::new();
        let mut current = self.input_name.clone();
        let last = self.layers.len().saturating_sub(1);
        for (k, layer) in self.layers.iter().enumerate() {
            let layer = if k == 0 {
                self.folded_first().unwrap_or_else(|| layer.clone())
            } else {
                layer.clone()
            };
            let (w, b) = (format!("layer{k}.weight"), format!("layer{k}.bias"));
            initializers.push(tensor(
                &w,
                &[layer.inputs as i64, layer.outputs as i64],
                layer.weight.clone(),
            ));
            initializers.push(tensor(&b, &[layer.outputs as i64], layer.bias.clone()));
            let product = format!("layer{k}.matmul");
            nodes.push(node("MatMul", &[&current, &w], &product, vec![]));
            let sum = if k == last {
                "logits".to_owned()
            } else {
                format!("layer{k}.add")
            };
            nodes.push(node("Add", &[&product, &b], &sum, vec![]));
            current = if k == last {
                sum
            } else {
                let relu = format!("layer{k}.relu");
                nodes.push(node("Relu", &[&sum], &relu, vec![]));
                relu
            };
        }
        nodes.push(node(
            "Softmax",
            &["logits"],
            "probabilities",
            vec![AttributeProto {
                name: "axis".into(),
                i: -1,
                r#type: ATTRIBUTE_INT,
                ..Default::default()
            }],
        ));
        let model = ModelProto {
            ir_version: 8,
            producer_name: "sluice retrain".into(),
            producer_version: env!("CARGO_PKG_VERSION").into(),
            model_version: 1,
            doc_string: String::new(),
            graph: Some(GraphProto {
                node: nodes,
                name: graph_name.into(),
                initializer: initializers,
                input: vec![value_info(&self.input_name, self.features() as i64)],
                output: vec![
                    value_info("logits", self.classes() as i64),
                    value_info("probabilities", self.classes() as i64),
                ],
            }),
            opset_import: vec![OperatorSetIdProto {
                domain: String::new(),
                version: 17,
            }],
            metadata_props: vec![StringStringEntryProto {
                key: "labels".into(),
                value: serde_json::to_string(&self.labels).unwrap_or_default(),
            }],
        };
        model.encode_to_vec()
    }

    /// The registry manifest describing this model (version filled in by the registry).
    pub fn manifest(
        &self,
        name: &str,
        metrics: serde_json::Map<String, serde_json::Value>,
        description: &str,
    ) -> Manifest {
        let spec = |name: &str, width: usize| TensorSpec {
            name: name.into(),
            dtype: "float32".into(),
            shape: vec![Dim::Named("batch".into()), Dim::Fixed(width as i64)],
        };
        Manifest {
            name: name.into(),
            version: String::new(),
            created_at: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            description: description.into(),
            inputs: vec![spec(&self.input_name, self.features())],
            outputs: vec![
                spec("logits", self.classes()),
                spec("probabilities", self.classes()),
            ],
            labels: Some(self.labels.clone()),
            metrics,
            profile: None,
        }
    }
}

fn tensor(name: &str, dims: &[i64], data: Vec<f32>) -> TensorProto {
    TensorProto {
        dims: dims.to_vec(),
        data_type: FLOAT,
        float_data: data,
        name: name.into(),
        ..Default::default()
    }
}

pub(crate) fn node(
    op: &str,
    inputs: &[&str],
    output: &str,
    attribute: Vec<AttributeProto>,
) -> NodeProto {
    NodeProto {
        input: inputs.iter().map(|s| (*s).to_owned()).collect(),
        output: vec![output.to_owned()],
        name: output.to_owned(),
        op_type: op.into(),
        attribute,
    }
}

fn value_info(name: &str, width: i64) -> ValueInfoProto {
    value_info_dims(
        name,
        FLOAT,
        &[
            DimensionValue::Named("batch".into()),
            DimensionValue::Fixed(width),
        ],
    )
}

/// A tensor input or output of element type `elem_type` (`FLOAT`, `INT64`).
pub(crate) fn value_info_dims(
    name: &str,
    elem_type: i32,
    dims: &[DimensionValue],
) -> ValueInfoProto {
    ValueInfoProto {
        name: name.into(),
        r#type: Some(TypeProto {
            tensor_type: Some(TensorTypeProto {
                elem_type,
                shape: Some(TensorShapeProto {
                    dim: dims
                        .iter()
                        .map(|d| Dimension {
                            value: Some(d.clone()),
                        })
                        .collect(),
                }),
            }),
        }),
    }
}

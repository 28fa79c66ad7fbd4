//! Derived columns computed from model outputs: argmax -> label, max, one element,
//! softmax, threshold -> flag. Vector inputs are `FixedSizeList` columns; each function
//! walks the list's contiguous value buffer a row (`width` values) at a time.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use arrow::array::{
    Array, ArrayRef, AsArray, BooleanArray, FixedSizeListArray, Float32Array, RecordBatch,
    StringArray,
};
use arrow::buffer::ScalarBuffer;
use arrow::compute::cast;
use arrow::datatypes::{DataType, Field, Float32Type, Float64Type, Schema};

use crate::config::{DeriveConfig, LabelSource};
use crate::model::argmax;
use crate::model::Registry;
use crate::stage::{PlanIssues, StageError};

/// Labels by model version label (`NAME/VERSION`), read from manifests once each.
#[derive(Default)]
pub struct LabelCache {
    by_version: Mutex<HashMap<String, Option<Arc<Vec<String>>>>>,
}

impl LabelCache {
    fn labels(&self, registry: &Registry, version_label: &str) -> Option<Arc<Vec<String>>> {
        let mut cache = match self.by_version.lock() {
            Ok(c) => c,
            Err(poisoned) => poisoned.into_inner(),
        };
        cache
            .entry(version_label.to_owned())
            .or_insert_with(|| {
                let (name, version) = version_label.rsplit_once('/')?;
                let manifest = registry.manifest(&registry.version(name, version));
                match manifest {
                    Ok(m) => m.labels.map(Arc::new),
                    Err(e) => {
                        tracing::warn!(version = version_label, error = %e, "no labels for this model version; writing class indices");
                        None
                    }
                }
            })
            .clone()
    }
}

fn vector_width(field: &Field) -> Option<usize> {
    match field.data_type() {
        DataType::FixedSizeList(item, n) if item.data_type().is_floating() => Some(*n as usize),
        _ => None,
    }
}

/// Adds the derived fields to `fields`, reporting problems under `derive[i]`.
pub fn plan(derive: &[DeriveConfig], fields: &mut Vec<Arc<Field>>, issues: &mut PlanIssues) {
    for (i, op) in derive.iter().enumerate() {
        let key = format!("derive[{i}]");
        let schema = Schema::new(fields.clone());
        let (input, output) = match op {
            DeriveConfig::Argmax { input, output, .. }
            | DeriveConfig::Max { input, output }
            | DeriveConfig::Element { input, output, .. }
            | DeriveConfig::Sum { input, output, .. }
            | DeriveConfig::Softmax { input, output }
            | DeriveConfig::Threshold { input, output, .. } => (input, output),
        };
        let Ok(field) = schema.field_with_name(input) else {
            issues.unknown_column(&format!("{key}.input"), input, &schema);
            continue;
        };
        let width = vector_width(field);
        let data_type = match op {
            DeriveConfig::Threshold { .. } => {
                if !field.data_type().is_numeric() {
                    issues.add(
                        &format!("{key}.input"),
                        format!(
                            "column `{input}` is {}, expected a number",
                            field.data_type()
                        ),
                    );
                }
                DataType::Boolean
            }
            _ if width.is_none() => {
                issues.add(
                    &format!("{key}.input"),
                    format!(
                        "column `{input}` is {}, expected a vector of floats (a model output)",
                        field.data_type()
                    ),
                );
                continue;
            }
            DeriveConfig::Argmax {
                labels,
                version_column,
                ..
            } => {
                check_labels(
                    labels,
                    version_column,
                    width.unwrap_or(0),
                    &schema,
                    &key,
                    issues,
                );
                DataType::Utf8
            }
            DeriveConfig::Element { index, .. } => {
                if *index >= width.unwrap_or(0) {
                    issues.add(
                        &format!("{key}.index"),
                        format!(
                            "index {index} is outside the vector's {} elements",
                            width.unwrap_or(0)
                        ),
                    );
                }
                DataType::Float32
            }
            DeriveConfig::Sum { indices, .. } => {
                let width = width.unwrap_or(0);
                if indices.is_empty() {
                    issues.add(&format!("{key}.indices"), "expected at least one index");
                }
                if let Some(bad) = indices.iter().find(|&&i| i >= width) {
                    issues.add(
                        &format!("{key}.indices"),
                        format!("index {bad} is outside the vector's {width} elements"),
                    );
                }
                DataType::Float32
            }
            DeriveConfig::Softmax { .. } => DataType::FixedSizeList(
                Arc::new(Field::new_list_field(DataType::Float32, false)),
                width.unwrap_or(0) as i32,
            ),
            DeriveConfig::Max { .. } => DataType::Float32,
        };
        if schema.field_with_name(output).is_ok() {
            issues.add(
                &format!("{key}.output"),
                format!("column `{output}` already exists"),
            );
        }
        let nullable = matches!(op, DeriveConfig::Threshold { .. }) && field.is_nullable();
        fields.push(Arc::new(Field::new(output, data_type, nullable)));
    }
}

fn check_labels(
    labels: &LabelSource,
    version_column: &str,
    width: usize,
    schema: &Schema,
    key: &str,
    issues: &mut PlanIssues,
) {
    match labels {
        LabelSource::Listed(names) if names.len() != width => {
            issues.add(&format!("{key}.labels"), format!("{} labels for a vector of {width}", names.len()));
        }
        LabelSource::Listed(_) => {}
        LabelSource::FromModel(word) if word != "model" => {
            issues.add(&format!("{key}.labels"), format!("expected a list of labels or `model`, found `{word}`"));
        }
        LabelSource::FromModel(_) => match schema.field_with_name(version_column) {
            Ok(f) if f.data_type() == &DataType::Utf8 => {}
            _ => issues.add(
                &format!("{key}.version_column"),
                format!("`labels: model` reads labels from the manifest of the version in column `{version_column}`, which an earlier infer stage must write"),
            ),
        },
    }
}

/// A vector column's values as one row-major float buffer, and its width. Float32
/// vectors (what `infer` writes) are read in place; other types are cast once.
fn float_values(column: &ArrayRef) -> Result<(ScalarBuffer<f32>, usize), StageError> {
    let list = column.as_fixed_size_list();
    let width = list.value_length() as usize;
    let values = list.values().slice(0, list.len() * width);
    let values = match values.data_type() {
        DataType::Float32 => values,
        _ => cast(&values, &DataType::Float32)?,
    };
    Ok((values.as_primitive::<Float32Type>().values().clone(), width))
}

/// Computes one derived column over `rows` (which already has the earlier ones).
pub fn compute(
    op: &DeriveConfig,
    rows: &RecordBatch,
    registry: &Registry,
    labels: &LabelCache,
) -> Result<ArrayRef, StageError> {
    let column = |name: &str| {
        rows.column_by_name(name)
            .cloned()
            .ok_or_else(|| StageError::MissingColumn {
                stage: "enrich".into(),
                column: name.to_owned(),
            })
    };
    Ok(match op {
        DeriveConfig::Argmax {
            input,
            labels: source,
            version_column,
            ..
        } => {
            let (values, width) = float_values(&column(input)?)?;
            let winners = values.chunks(width.max(1)).map(argmax);
            match source {
                LabelSource::Listed(names) => Arc::new(StringArray::from_iter_values(
                    winners.map(|i| names[i].as_str()),
                )),
                LabelSource::FromModel(_) => {
                    let versions = column(version_column)?;
                    let versions = versions.as_string::<i32>();
                    let labelled: Vec<String> = winners
                        .enumerate()
                        .map(
                            |(row, i)| match labels.labels(registry, versions.value(row)) {
                                Some(names) if i < names.len() => names[i].clone(),
                                _ => i.to_string(),
                            },
                        )
                        .collect();
                    Arc::new(StringArray::from(labelled))
                }
            }
        }
        DeriveConfig::Max { input, .. } => {
            let (values, width) = float_values(&column(input)?)?;
            Arc::new(Float32Array::from_iter_values(
                values
                    .chunks(width.max(1))
                    .map(|r| r.iter().copied().fold(f32::NEG_INFINITY, f32::max)),
            ))
        }
        DeriveConfig::Element { input, index, .. } => {
            let (values, width) = float_values(&column(input)?)?;
            Arc::new(Float32Array::from_iter_values(
                values.chunks(width.max(1)).map(|r| r[*index]),
            ))
        }
        DeriveConfig::Sum { input, indices, .. } => {
            let (values, width) = float_values(&column(input)?)?;
            Arc::new(Float32Array::from_iter_values(
                values
                    .chunks(width.max(1))
                    .map(|r| indices.iter().map(|&i| r[i]).sum::<f32>()),
            ))
        }
        DeriveConfig::Softmax { input, .. } => {
            let (values, width) = float_values(&column(input)?)?;
            let mut values = values.to_vec();
            for row in values.chunks_mut(width.max(1)) {
                let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                let mut sum = 0.0;
                for v in row.iter_mut() {
                    *v = (*v - max).exp();
                    sum += *v;
                }
                for v in row.iter_mut() {
                    *v /= sum;
                }
            }
            let item = Arc::new(Field::new_list_field(DataType::Float32, false));
            Arc::new(FixedSizeListArray::try_new(
                item,
                width as i32,
                Arc::new(Float32Array::from(values)),
                None,
            )?)
        }
        DeriveConfig::Threshold { input, above, .. } => {
            let values = cast(&column(input)?, &DataType::Float64)?;
            let values = values.as_primitive::<Float64Type>();
            Arc::new(
                values
                    .iter()
                    .map(|v| v.map(|v| v > *above))
                    .collect::<BooleanArray>(),
            )
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch() -> RecordBatch {
        let item = Arc::new(Field::new_list_field(DataType::Float32, false));
        let probs = FixedSizeListArray::try_new(
            item,
            2,
            Arc::new(Float32Array::from(vec![0.2, 0.8, 0.9, 0.1])),
            None,
        )
        .unwrap();
        RecordBatch::try_from_iter([("p", Arc::new(probs) as ArrayRef)]).unwrap()
    }

    #[test]
    fn argmax_max_element_softmax_and_threshold() {
        let rows = batch();
        let registry = Registry::new("/nonexistent");
        let cache = LabelCache::default();
        let op = |json: &str| serde_json::from_str::<DeriveConfig>(json).unwrap();
        let label = compute(
            &op(r#"{"argmax": {"input": "p", "output": "l", "labels": ["neg", "pos"]}}"#),
            &rows,
            &registry,
            &cache,
        )
        .unwrap();
        assert_eq!(
            label
                .as_string::<i32>()
                .iter()
                .flatten()
                .collect::<Vec<_>>(),
            ["pos", "neg"]
        );
        let max = compute(
            &op(r#"{"max": {"input": "p", "output": "m"}}"#),
            &rows,
            &registry,
            &cache,
        )
        .unwrap();
        assert_eq!(
            max.as_primitive::<Float32Type>().values().to_vec(),
            [0.8, 0.9]
        );
        let second = compute(
            &op(r#"{"element": {"input": "p", "index": 1, "output": "e"}}"#),
            &rows,
            &registry,
            &cache,
        )
        .unwrap();
        assert_eq!(
            second.as_primitive::<Float32Type>().values().to_vec(),
            [0.8, 0.1]
        );
        let sum = compute(
            &op(r#"{"sum": {"input": "p", "indices": [0, 1], "output": "t"}}"#),
            &rows,
            &registry,
            &cache,
        )
        .unwrap();
        assert_eq!(
            sum.as_primitive::<Float32Type>().values().to_vec(),
            [1.0, 1.0]
        );
        let soft = compute(
            &op(r#"{"softmax": {"input": "p", "output": "s"}}"#),
            &rows,
            &registry,
            &cache,
        )
        .unwrap();
        let (values, _) = float_values(&soft).unwrap();
        assert!((values[0] + values[1] - 1.0).abs() < 1e-6 && values[1] > values[0]);
        let flag = compute(
            &op(r#"{"threshold": {"input": "m", "output": "f", "above": 0.85}}"#),
            &RecordBatch::try_from_iter([("m", max)]).unwrap(),
            &registry,
            &cache,
        )
        .unwrap();
        assert_eq!(
            flag.as_boolean().iter().collect::<Vec<_>>(),
            [Some(false), Some(true)]
        );
    }
}

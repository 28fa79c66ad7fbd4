//! Deserializing a pipeline file's YAML into [`PipelineConfig`], reporting every
//! independent mistake: when the whole file fails, each section is tried on its own.

use serde::Deserialize;
use serde_norway::Value;

use super::{
    typed, ConfigIssue, DeadLetterConfig, DecodeConfig, KafkaClientsConfig, OnnxRuntimeConfig,
    PipelineConfig, PipelineRetrainConfig, SinkConfig, SourceConfig, StageConfig, StorageConfig,
};

/// The top level with every section left as YAML, used to report unknown and missing
/// top-level keys when the full typed parse fails.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
struct TopLevelShape {
    name: Value,
    source: Value,
    decode: Value,
    #[serde(default)]
    stages: Option<Vec<Value>>,
    #[serde(default)]
    models: Option<Value>,
    #[serde(default)]
    onnxruntime: Option<Value>,
    #[serde(default)]
    retrain: Option<Value>,
    sinks: Vec<Value>,
    dead_letter: Value,
    #[serde(default)]
    metrics: Option<Value>,
    #[serde(default)]
    kafka: Option<Value>,
    #[serde(default)]
    storage: Option<std::collections::BTreeMap<String, Value>>,
}

/// The top-level keys of a pipeline file.
pub const PIPELINE_KEYS: &[&str] = &[
    "name",
    "source",
    "decode",
    "stages",
    "models",
    "onnxruntime",
    "retrain",
    "sinks",
    "dead_letter",
    "metrics",
    "kafka",
    "storage",
];

/// Deserializes the whole file; when that fails, deserializes each section on its own so
/// that every independent mistake is reported.
pub fn parse_sections(root: &Value) -> Result<PipelineConfig, Vec<ConfigIssue>> {
    let first = match typed::<PipelineConfig>(root, "") {
        Ok(config) => return Ok(config),
        Err(issue) => issue,
    };
    let mut issues = Vec::new();
    if let Err(issue) = typed::<TopLevelShape>(root, "") {
        issues.push(issue);
    }
    let section = |key: &str| root.get(key).filter(|v| !v.is_null());
    if let Some(name) = section("name") {
        issues.extend(typed::<String>(name, "name").err());
    }
    if let Some(source) = section("source") {
        issues.extend(typed::<SourceConfig>(source, "source").err());
    }
    if let Some(decode) = section("decode") {
        issues.extend(typed::<DecodeConfig>(decode, "decode").err());
    }
    if let Some(Value::Sequence(stages)) = section("stages") {
        for (i, stage) in stages.iter().enumerate() {
            issues.extend(typed::<StageConfig>(stage, &format!("stages[{i}]")).err());
        }
    }
    if let Some(onnxruntime) = section("onnxruntime") {
        issues.extend(typed::<OnnxRuntimeConfig>(onnxruntime, "onnxruntime").err());
    }
    if let Some(retrain) = section("retrain") {
        issues.extend(typed::<PipelineRetrainConfig>(retrain, "retrain").err());
    }
    if let Some(Value::Sequence(sinks)) = section("sinks") {
        for (i, sink) in sinks.iter().enumerate() {
            issues.extend(typed::<SinkConfig>(sink, &format!("sinks[{i}]")).err());
        }
    }
    if let Some(dead_letter) = section("dead_letter") {
        issues.extend(typed::<DeadLetterConfig>(dead_letter, "dead_letter").err());
    }
    if let Some(kafka) = section("kafka") {
        issues.extend(typed::<KafkaClientsConfig>(kafka, "kafka").err());
    }
    if let Some(Value::Mapping(storage)) = section("storage") {
        for (prefix, block) in storage {
            let prefix = prefix.as_str().unwrap_or("?");
            issues.extend(typed::<StorageConfig>(block, &format!("storage.{prefix}")).err());
        }
    }
    issues.dedup();
    if issues.is_empty() {
        issues.push(first);
    }
    Err(issues)
}

//! Planning an infer stage at load time: how each model input is fed (token lists or
//! vectors, from which columns), which outputs become which columns, the `cpu_model`
//! contract, and the stage's output schema, all from the serving version's manifest, so
//! `validate` catches mismatches without loading a model.

use std::sync::Arc;
use std::time::Duration;

use arrow::datatypes::{DataType, Field, Schema};

use super::lanes;
use super::live;
use super::tensors::{Elem, OutputSpec};
use crate::config::{limits, InferConfig, InputColumns};
use crate::model::{Dim, Manifest, Registry, RegistryError};
use crate::stage::{PlanContext, PlanIssues};

/// How a model input is fed, decided from the manifest.
pub(super) struct InputPlan {
    pub(super) name: String,
    pub(super) elem: Elem,
    /// `[batch, seq]` with a dynamic second dimension (token ids and masks).
    pub(super) sequence: bool,
}

pub(super) fn input_plans(
    config: &InferConfig,
    manifest: &Manifest,
    issues: &mut PlanIssues,
) -> Vec<InputPlan> {
    let mut plans = Vec::new();
    for spec in &manifest.inputs {
        if !config.inputs.contains_key(&spec.name) {
            issues.add(
                "inputs",
                format!("model input `{}` is not mapped to a column", spec.name),
            );
        }
    }
    for name in config.inputs.keys() {
        let Some(spec) = manifest.input(name) else {
            let known: Vec<&str> = manifest.inputs.iter().map(|i| i.name.as_str()).collect();
            issues.add(
                &format!("inputs.{name}"),
                format!(
                    "model `{}` has no input `{name}`; its inputs are: {}",
                    manifest.name,
                    known.join(", ")
                ),
            );
            continue;
        };
        let Some(elem) = Elem::from_dtype(&spec.dtype) else {
            issues.add(
                &format!("inputs.{name}"),
                format!(
                    "input dtype {} is not supported (int64, float32 are)",
                    spec.dtype
                ),
            );
            continue;
        };
        let sequence =
            spec.shape.len() == 2 && matches!(spec.shape[1], Dim::Named(_) | Dim::Fixed(-1));
        plans.push(InputPlan {
            name: name.clone(),
            elem,
            sequence,
        });
    }
    plans
}

pub(super) fn output_specs(
    config: &InferConfig,
    manifest: &Manifest,
    issues: &mut PlanIssues,
) -> Vec<OutputSpec> {
    let mut specs = Vec::new();
    for (output, column) in &config.outputs {
        let Some(spec) = manifest.output(output) else {
            let known: Vec<&str> = manifest.outputs.iter().map(|o| o.name.as_str()).collect();
            issues.add(
                &format!("outputs.{output}"),
                format!(
                    "model `{}` has no output `{output}`; its outputs are: {}",
                    manifest.name,
                    known.join(", ")
                ),
            );
            continue;
        };
        let Some(elem) = Elem::from_dtype(&spec.dtype) else {
            issues.add(
                &format!("outputs.{output}"),
                format!(
                    "output dtype {} is not supported (int64, float32 are)",
                    spec.dtype
                ),
            );
            continue;
        };
        let Some(tail) = spec.fixed_tail() else {
            issues.add(&format!("outputs.{output}"), "the output has a dynamic dimension after the batch one; sluice maps fixed-width outputs to columns");
            continue;
        };
        specs.push(OutputSpec {
            output: output.clone(),
            column: column.clone(),
            elem,
            width: tail.iter().product::<i64>() as usize,
            vector: !tail.is_empty(),
        });
    }
    specs
}

fn check_columns(
    config: &InferConfig,
    plans: &[InputPlan],
    manifest: &Manifest,
    input: &Schema,
    issues: &mut PlanIssues,
) {
    for plan in plans {
        let Some(columns) = config.inputs.get(&plan.name) else {
            continue;
        };
        let key = format!("inputs.{}", plan.name);
        let names = columns.names();
        let mut fields = Vec::new();
        for name in &names {
            match input.field_with_name(name) {
                Ok(f) => fields.push(f),
                Err(_) => issues.unknown_column(&key, name, input),
            }
        }
        if fields.len() != names.len() {
            continue;
        }
        let spec = manifest.input(&plan.name);
        let width = spec
            .and_then(|s| s.fixed_tail())
            .map(|t| t.iter().product::<i64>());
        let ok = match (columns, fields.as_slice()) {
            (InputColumns::One(_), [f]) => match f.data_type() {
                DataType::List(item) | DataType::LargeList(item) => {
                    plan.sequence && item.data_type().is_integer()
                }
                DataType::FixedSizeList(item, n) => {
                    !plan.sequence && item.data_type().is_numeric() && width == Some(i64::from(*n))
                }
                dt => !plan.sequence && dt.is_numeric() && width == Some(1),
            },
            (_, fields) => {
                !plan.sequence
                    && fields.iter().all(|f| f.data_type().is_numeric())
                    && width == Some(fields.len() as i64)
            }
        };
        if !ok {
            let want = spec
                .map(|s| format!("{} {:?}", s.dtype, s.shape))
                .unwrap_or_default();
            let have: Vec<String> = fields
                .iter()
                .map(|f| format!("{}: {}", f.name(), f.data_type()))
                .collect();
            issues.add(&key, format!("columns [{}] cannot feed model input `{}` ({want}): token inputs take a list column, vector inputs a fixed-size list of the same width or that many numeric columns", have.join(", "), plan.name));
        }
    }
    if let Some(length) = &config.sort_by_length_of {
        if !plans.iter().any(|p| &p.name == length && p.sequence) {
            issues.add(
                "sort_by_length_of",
                format!("`{length}` is not one of the model's [batch, seq] inputs"),
            );
        }
    }
}

/// `cpu_model` must be published, take the same inputs and give the same outputs as
/// `model` (it serves the same rows), and cannot be combined with canary or shadow
/// versions (those are versions of `model`).
fn check_cpu_model(
    config: &InferConfig,
    cpu_model: &str,
    ctx: &PlanContext,
    issues: &mut PlanIssues,
) {
    if config.canary.is_some() || config.shadow.is_some() {
        issues.add(
            "cpu_model",
            "cannot be combined with `canary` or `shadow` (they name versions of `model`)",
        );
    }
    let manifests = ctx
        .registry
        .current(cpu_model)
        .and_then(|v| ctx.registry.manifest(&v))
        .and_then(|cpu| Ok((cpu, current_manifest(config, &ctx.registry)?)));
    let (cpu, main) = match manifests {
        Ok(pair) => pair,
        Err(e) => {
            issues.add("cpu_model", e.to_string());
            return;
        }
    };
    let shape = |m: &Manifest| {
        let mut specs: Vec<String> = m
            .inputs
            .iter()
            .chain(&m.outputs)
            .map(|t| format!("{} {} {:?}", t.name, t.dtype, t.shape))
            .collect();
        specs.sort();
        specs
    };
    if shape(&cpu) != shape(&main) {
        issues.add(
            "cpu_model",
            format!(
                "`{cpu_model}` must take the same inputs and give the same outputs as `{}`: it has [{}], `{}` has [{}]",
                config.model,
                shape(&cpu).join(", "),
                config.model,
                shape(&main).join(", ")
            ),
        );
    }
}

/// The manifest of the model's current version, for planning.
pub(super) fn current_manifest(
    config: &InferConfig,
    registry: &Registry,
) -> Result<Manifest, RegistryError> {
    let version = registry.current(&config.model)?;
    registry.manifest(&version)
}

/// Output schema: the input (minus the inputs with `drop_inputs`), the mapped outputs and
/// the version column. Shapes come from the current version's manifest.
pub fn output_schema(
    config: &InferConfig,
    input: &Schema,
    ctx: &PlanContext,
    issues: &mut PlanIssues,
) -> Schema {
    issues.count("max_batch", config.max_batch, 1, 1 << 20);
    issues.count("workers", config.workers, 1, 256);
    issues.count("intra_threads", config.intra_threads, 0, 1024);
    issues.duration("max_wait", config.max_wait, Duration::ZERO, limits::MINUTE);
    issues.duration(
        "watch_interval",
        config.watch_interval,
        limits::MILLISECOND * 10,
        limits::DAY,
    );
    if config.outputs.is_empty() {
        issues.add(
            "outputs",
            "expected at least one model output mapped to a column",
        );
    }
    let drift = &config.drift;
    issues.count("drift.window", drift.window, 0, 10_000_000);
    if !(drift.clear_below >= 0.0 && drift.raise_above > drift.clear_below) {
        issues.add(
            "drift",
            format!(
                "expected 0 <= clear_below < raise_above, found clear_below {} and raise_above {}",
                drift.clear_below, drift.raise_above
            ),
        );
    }
    if drift.topic.as_deref() == Some("") {
        issues.add("drift.topic", "expected a topic name");
    }
    lanes::check(config, input, ctx, issues);
    if let Some(cpu_model) = &config.cpu_model {
        check_cpu_model(config, cpu_model, ctx, issues);
    }
    let manifest = match current_manifest(config, &ctx.registry) {
        Ok(m) => m,
        Err(e) => {
            issues.add("model", e.to_string());
            return input.clone();
        }
    };
    let plans = input_plans(config, &manifest, issues);
    check_columns(config, &plans, &manifest, input, issues);
    if let Some(accuracy) = &config.accuracy {
        live::check(accuracy, &config.outputs, input, &manifest, issues);
    }
    let specs = output_specs(config, &manifest, issues);
    let dropped: Vec<&str> = if config.drop_inputs {
        config.inputs.values().flat_map(|c| c.names()).collect()
    } else {
        Vec::new()
    };
    let mut fields: Vec<Arc<Field>> = input
        .fields()
        .iter()
        .filter(|f| !dropped.contains(&f.name().as_str()))
        .cloned()
        .collect();
    for spec in &specs {
        if fields.iter().any(|f| f.name() == &spec.column) {
            issues.add(
                &format!("outputs.{}", spec.output),
                format!("column `{}` already exists", spec.column),
            );
        }
        fields.push(Arc::new(spec.field()));
    }
    if fields.iter().any(|f| f.name() == &config.version_column) {
        issues.add(
            "version_column",
            format!(
                "column `{}` already exists (give each infer stage its own version_column)",
                config.version_column
            ),
        );
    }
    fields.push(Arc::new(Field::new(
        &config.version_column,
        DataType::Utf8,
        false,
    )));
    if config.shadow.is_some() {
        lanes::add_shadow_fields(config, &specs, &mut fields, issues);
    }
    Schema::new(fields)
}

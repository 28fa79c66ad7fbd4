//! `sluice models`: what a model registry holds (`list`, `show`, `diff`), moving its
//! `current` pointer (`promote`, `rollback`: the same pointer change running pipelines
//! watch, so they swap the version in without a restart), and copying a registry between
//! a local directory and an object store (`copy`). Object stores are reached with their
//! standard environment (`AWS_ACCESS_KEY_ID`, `AWS_ENDPOINT_URL`, ...).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;

use sluice::model::{Manifest, Registry};

#[derive(clap::Args)]
pub struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Subcommand)]
enum Command {
    /// List the models of a registry: the serving version and every published one.
    List {
        /// A registry directory or URL (e.g. `models`, `s3://bucket/models`).
        registry: PathBuf,
    },
    /// Show a version's manifest: inputs, outputs, labels, metrics (default: the current).
    Show {
        registry: PathBuf,
        model: String,
        #[arg(long)]
        version: Option<String>,
    },
    /// Two versions side by side: metrics, labels, inputs and outputs.
    Diff {
        registry: PathBuf,
        model: String,
        a: String,
        b: String,
    },
    /// Make a published version the serving one (running pipelines swap it in).
    Promote {
        registry: PathBuf,
        model: String,
        version: String,
    },
    /// Serve the published version before the current one again.
    Rollback { registry: PathBuf, model: String },
    /// Copy the published versions the target lacks, under the same numbers, and set the
    /// target's `current` pointers where it has none. Running it again copies only what
    /// is new.
    Copy {
        from: PathBuf,
        to: PathBuf,
        /// Only these models (repeatable; default: all).
        #[arg(long = "model")]
        models: Vec<String>,
    },
}

pub async fn execute(args: Args) -> anyhow::Result<ExitCode> {
    let storage = BTreeMap::new();
    tokio::task::spawn_blocking(move || -> anyhow::Result<ExitCode> {
        match args.command {
            Command::List { registry } => {
                let registry = Registry::open(&registry, &storage)?;
                for name in registry.models()? {
                    let current = registry
                        .current(&name)
                        .map(|v| v.version)
                        .unwrap_or_else(|_| "-".into());
                    let versions: Vec<String> = registry
                        .versions(&name)?
                        .into_iter()
                        .map(|v| v.version)
                        .collect();
                    println!(
                        "{name}: current {current}, versions {}",
                        versions.join(", ")
                    );
                }
            }
            Command::Show {
                registry,
                model,
                version,
            } => {
                let registry = Registry::open(&registry, &storage)?;
                let version = match version {
                    Some(v) => registry.version(&model, &v),
                    None => registry.current(&model)?,
                };
                let manifest = registry.manifest(&version)?;
                print!("{}", show(&manifest));
            }
            Command::Diff {
                registry,
                model,
                a,
                b,
            } => {
                let registry = Registry::open(&registry, &storage)?;
                let a = registry.manifest(&registry.version(&model, &a))?;
                let b = registry.manifest(&registry.version(&model, &b))?;
                print!("{}", diff(&a, &b));
            }
            Command::Promote {
                registry,
                model,
                version,
            } => {
                let registry = Registry::open(&registry, &storage)?;
                let before = registry.promote(&model, &version)?;
                println!(
                    "{model}: current {} -> {version}",
                    before.as_deref().unwrap_or("-")
                );
            }
            Command::Rollback { registry, model } => {
                let registry = Registry::open(&registry, &storage)?;
                let (from, to) = registry.rollback(&model)?;
                println!("{model}: current {from} -> {to}");
            }
            Command::Copy { from, to, models } => {
                let source = Registry::open(&from, &storage)?;
                let target = Registry::open(&to, &storage)?;
                let report = source.copy_to(&target, &models)?;
                for label in &report.copied {
                    println!("copied {label}");
                }
                for label in &report.present {
                    println!("present {label}");
                }
                for label in &report.pointed {
                    println!("current {label}");
                }
                println!(
                    "{} -> {}: {} copied, {} already there",
                    source.describe(),
                    target.describe(),
                    report.copied.len(),
                    report.present.len()
                );
            }
        }
        Ok(ExitCode::SUCCESS)
    })
    .await?
}

/// A manifest as lines: identity, then tensors, labels and metrics.
fn show(manifest: &Manifest) -> String {
    let tensors = |specs: &[sluice::model::TensorSpec]| -> String {
        specs
            .iter()
            .map(|t| {
                let dims: Vec<String> = t
                    .shape
                    .iter()
                    .map(|d| match d {
                        sluice::model::Dim::Fixed(n) => n.to_string(),
                        sluice::model::Dim::Named(name) => name.clone(),
                    })
                    .collect();
                format!("{} {}[{}]", t.name, t.dtype, dims.join(", "))
            })
            .collect::<Vec<_>>()
            .join("; ")
    };
    let mut out = format!(
        "{}/{}  created {}\n",
        manifest.name, manifest.version, manifest.created_at
    );
    if !manifest.description.is_empty() {
        out += &format!("  {}\n", manifest.description);
    }
    out += &format!("  inputs   {}\n", tensors(&manifest.inputs));
    out += &format!("  outputs  {}\n", tensors(&manifest.outputs));
    if let Some(labels) = &manifest.labels {
        out += &format!("  labels   {}\n", labels.join(", "));
    }
    for (key, value) in &manifest.metrics {
        out += &format!("  {key:<24} {}\n", scalar(value));
    }
    if let Some(profile) = &manifest.profile {
        if profile.predicted.is_empty() {
            // An encoder's: what it is fed, no predictions.
            out += &format!("  profile ({} rows)\n", profile.rows);
        } else {
            out += &format!(
                "  profile ({} holdout rows): predicted {}\n",
                profile.rows,
                shares(manifest, &profile.predicted)
            );
        }
        for feature in &profile.features {
            let edges: Vec<String> = feature.deciles.iter().map(|d| format!("{d:.3}")).collect();
            out += &format!("    {} deciles {}\n", feature.name, edges.join(" "));
        }
        if let Some(embedding) = &profile.embedding {
            let edges: Vec<String> = embedding
                .cosine_deciles
                .iter()
                .map(|d| format!("{d:.3}"))
                .collect();
            out += &format!(
                "    cosine to the {}-d training centroid, deciles {}\n",
                embedding.centroid.len(),
                edges.join(" ")
            );
        }
        if let Some(tokens) = &profile.tokens {
            let edges: Vec<String> = tokens.edges.iter().map(|d| format!("{d:.0}")).collect();
            out += &format!("    tokens per row, deciles {}\n", edges.join(" "));
        }
    }
    out
}

/// `label 48.2%, ...` for class shares.
fn shares(manifest: &Manifest, shares: &[f64]) -> String {
    shares
        .iter()
        .enumerate()
        .map(|(i, share)| {
            let label = manifest
                .labels
                .as_ref()
                .and_then(|l| l.get(i).cloned())
                .unwrap_or_else(|| i.to_string());
            format!("{label} {:.1}%", share * 100.0)
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// Metrics (and what else differs) of two versions in columns.
fn diff(a: &Manifest, b: &Manifest) -> String {
    let mut out = format!(
        "{:<26} {:>14} {:>14}\n",
        a.name,
        format!("v{}", a.version),
        format!("v{}", b.version)
    );
    let keys: std::collections::BTreeSet<&String> =
        a.metrics.keys().chain(b.metrics.keys()).collect();
    for key in keys {
        let cell = |m: &Manifest| m.metrics.get(key).map(scalar).unwrap_or_else(|| "-".into());
        out += &format!("{key:<26} {:>14} {:>14}\n", cell(a), cell(b));
    }
    if let (Some(pa), Some(pb)) = (&a.profile, &b.profile) {
        out += &format!(
            "{:<26} {} | {}\n",
            "predicted on holdout",
            shares(a, &pa.predicted),
            shares(b, &pb.predicted)
        );
    }
    if a.labels != b.labels {
        out += &format!("labels differ: {:?} vs {:?}\n", a.labels, b.labels);
    }
    if a.inputs != b.inputs || a.outputs != b.outputs {
        out += "inputs or outputs differ (see `sluice models show`)\n";
    }
    out
}

/// A metric value as a short string (numbers to 4 decimals; objects as JSON).
fn scalar(value: &serde_json::Value) -> String {
    match value {
        serde_json::Value::Number(n) => match n.as_f64() {
            Some(f) if n.is_f64() => format!("{f:.4}"),
            _ => n.to_string(),
        },
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

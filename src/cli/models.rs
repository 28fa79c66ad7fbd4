//! `sluice models`: what a model registry holds, and copying one between a local
//! directory and an object store (`s3://`, `gs://`, `az://`). Object stores are reached
//! with their standard environment (`AWS_ACCESS_KEY_ID`, `AWS_ENDPOINT_URL`, ...).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;

use sluice::model::Registry;

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

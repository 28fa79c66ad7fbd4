//! One module per `sluice` command; each has its clap `Args` and an `execute` that returns
//! the process exit code. Shared here: loading a pipeline file the way every command does
//! (a config error is exit status 2, printed as is) and the signal handling.

pub mod backfill;
pub mod bench;
pub mod demo;
pub mod generate;
pub mod memory;
pub mod models;
pub mod retrain;
pub mod run;
pub mod schema;
pub mod signal;
pub mod status;
pub mod validate;

use std::path::Path;
use std::process::ExitCode;

use sluice::pipeline::{self, Pipeline};
use sluice::telemetry;

/// Loads `file` (with `SLUICE_OUT` set to `out` when given), hides its secrets from every
/// output, and applies `--metrics-listen`. A config error is printed here and becomes
/// exit status 2.
pub fn load(
    file: &Path,
    out: Option<&Path>,
    metrics_listen: Option<String>,
) -> Result<Pipeline, ExitCode> {
    let loaded = match out {
        Some(out) => {
            let out = out.display().to_string();
            pipeline::load_with_vars(file, &|name| match name {
                "SLUICE_OUT" => Some(out.clone()),
                other => std::env::var(other).ok(),
            })
        }
        None => pipeline::load(file),
    };
    let mut pipeline = loaded.map_err(|error| {
        eprintln!("{error}");
        ExitCode::from(2)
    })?;
    telemetry::secrets::hide(&pipeline.redactions);
    // `--metrics-listen` / `SLUICE_METRICS_LISTEN` (non-empty) replaces `metrics.listen`.
    if let Some(listen) = metrics_listen.filter(|l| !l.is_empty()) {
        pipeline.config.metrics = Some(sluice::config::MetricsConfig { listen });
    }
    Ok(pipeline)
}

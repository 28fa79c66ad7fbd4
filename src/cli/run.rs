//! `sluice run`: a pipeline until SIGINT/SIGTERM, then drain, commit and exit 0.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use sluice::runtime;
use sluice::telemetry::Stats;

#[derive(clap::Args)]
pub struct Args {
    /// The pipeline file (YAML).
    pipeline: PathBuf,
    /// Serve /metrics and /health on HOST:PORT (overrides the file's `metrics.listen`).
    #[arg(long, env = "SLUICE_METRICS_LISTEN")]
    metrics_listen: Option<String>,
    /// While storage is full, retry for this long (with backoff, `/health` saying
    /// why) before exiting.
    #[arg(long, env = "SLUICE_STORAGE_RETRY", default_value = "5m", value_parser = humantime::parse_duration)]
    storage_retry: std::time::Duration,
}

pub async fn execute(args: Args) -> anyhow::Result<ExitCode> {
    let mut pipeline = match super::load(&args.pipeline, None, args.metrics_listen) {
        Ok(pipeline) => pipeline,
        Err(code) => return Ok(code),
    };
    pipeline.storage_retry = args.storage_retry;
    let shutdown = super::signal::shutdown_on_signal();
    let summary = runtime::run(&pipeline, shutdown, Arc::new(Stats::default()))
        .await
        .with_context(|| format!("pipeline `{}` stopped", pipeline.name()))?;
    tracing::info!(?summary, "pipeline stopped cleanly");
    Ok(ExitCode::SUCCESS)
}

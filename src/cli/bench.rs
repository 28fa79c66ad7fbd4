//! `sluice bench`: a pipeline's end-to-end throughput against the raw consume rate of the
//! same messages, appended to a results file.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use sluice::demo::{self, bench};

#[derive(clap::Args)]
pub struct Args {
    /// A pipeline name in pipelines/ (`bench`: no model; `sentiment`) or a file.
    #[arg(long, default_value = "bench")]
    pipeline: PathBuf,
    #[arg(long, default_value = "out/bench")]
    out: PathBuf,
    #[arg(long, default_value_t = 200_000)]
    records: u64,
    /// JSON-lines file the result is appended to.
    #[arg(long, default_value = "benches/results/e2e.jsonl")]
    results: PathBuf,
    /// Also write the generated payloads here (JSON lines) for a baseline to replay.
    #[arg(long)]
    export_input: Option<PathBuf>,
}

pub async fn execute(args: Args) -> anyhow::Result<ExitCode> {
    let pipeline = demo::pipeline_path(&args.pipeline);
    let result = bench::run(
        &pipeline,
        &args.out,
        args.records,
        args.export_input.as_deref(),
    )
    .await
    .context("bench failed")?;
    println!("{result}");
    bench::append_result(&args.results, &result)
        .with_context(|| format!("appending to {}", args.results.display()))?;
    println!("appended to {}", args.results.display());
    Ok(ExitCode::SUCCESS)
}

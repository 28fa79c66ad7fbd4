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
    /// `mock`: librdkafka's in-process cluster (quick; 5 MB per partition); `noida`: a
    /// noida-db broker process started for the run, loaded with every record first (long
    /// runs: millions of records).
    #[arg(long, default_value = "mock")]
    broker: bench::BrokerKind,
    /// Partitions of the input topic.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(i32).range(1..=256))]
    partitions: i32,
}

pub async fn execute(args: Args) -> anyhow::Result<ExitCode> {
    let pipeline = demo::pipeline_path(&args.pipeline);
    let result = bench::run(
        &pipeline,
        &args.out,
        args.records,
        args.export_input.as_deref(),
        args.broker,
        args.partitions,
    )
    .await
    .context("bench failed")?;
    println!("{result}");
    bench::append_result(&args.results, &result)
        .with_context(|| format!("appending to {}", args.results.display()))?;
    println!("appended to {}", args.results.display());
    Ok(ExitCode::SUCCESS)
}

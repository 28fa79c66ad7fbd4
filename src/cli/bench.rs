//! `sluice bench`: a pipeline's end-to-end throughput against the raw consume rate of the
//! same messages or, with `--rate`, its latency and memory at a fixed offered rate;
//! appended to a results file.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use sluice::demo::{self, bench, latency};

#[derive(clap::Args)]
pub struct Args {
    /// A pipeline name in pipelines/ (`bench`: no model; `sentiment`) or a file.
    #[arg(long, default_value = "bench")]
    pipeline: PathBuf,
    #[arg(long, default_value = "out/bench")]
    out: PathBuf,
    #[arg(long, default_value_t = 200_000)]
    records: u64,
    /// JSON-lines file the result is appended to. Default:
    /// `benches/results/e2e.jsonl`, with `--rate` `benches/results/latency.jsonl`.
    #[arg(long)]
    results: Option<PathBuf>,
    /// Also write the generated payloads here (JSON lines) for a baseline to replay.
    #[arg(long)]
    export_input: Option<PathBuf>,
    /// `mock`: librdkafka's in-process cluster (quick; 5 MB per partition); `noida` or
    /// `tansu`: a noida-db or Tansu broker process started for the run, loaded with every
    /// record first (long runs: millions of records). noida-db rewrites its state file
    /// after every change (a core for seconds); Tansu (memory storage) uses little CPU on
    /// a topic loaded in large batches, but more the more batches it holds: for latency
    /// runs (`--rate`, a batch every few records) use noida.
    #[arg(long, default_value = "mock")]
    broker: bench::BrokerKind,
    /// Throughput mode: how many times each side runs, alternating (a raw read, then the
    /// pipeline, each round; on a broker process one more raw read at the end); the
    /// medians are compared.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=20))]
    rounds: u16,
    /// Partitions of the input topic.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(i32).range(1..=256))]
    partitions: i32,
    /// Latency mode: offer this many records per second (e.g. half the throughput `sluice
    /// bench` measured) and report end-to-end latency and memory instead of throughput.
    #[arg(long)]
    rate: Option<f64>,
    /// Latency mode: how long to offer records.
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    duration: std::time::Duration,
    /// Latency mode: the first part left out of the figures.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    warmup: std::time::Duration,
    /// Latency mode: where the latency and memory PNGs go.
    #[arg(long, default_value = "benches")]
    plots: PathBuf,
}

pub async fn execute(args: Args) -> anyhow::Result<ExitCode> {
    let pipeline = demo::pipeline_path(&args.pipeline);
    if let Some(rate) = args.rate {
        anyhow::ensure!(
            rate.is_finite() && rate > 0.0 && rate <= 10_000_000.0,
            "--rate: expected records per second above 0 and at most 10000000, found {rate}"
        );
        anyhow::ensure!(
            args.warmup < args.duration,
            "--warmup must be shorter than --duration"
        );
        let options = latency::LatencyOptions {
            pipeline_file: pipeline,
            out: args.out,
            rate,
            duration: args.duration,
            warmup: args.warmup,
            broker: args.broker,
            partitions: args.partitions,
            plots: args.plots,
        };
        let result = latency::run(&options).await.context("bench failed")?;
        println!("{result}");
        let results = args
            .results
            .unwrap_or_else(|| PathBuf::from("benches/results/latency.jsonl"));
        bench::append_result(&results, &result)
            .with_context(|| format!("appending to {}", results.display()))?;
        println!("appended to {}", results.display());
        return Ok(ExitCode::SUCCESS);
    }
    let results = args
        .results
        .unwrap_or_else(|| PathBuf::from("benches/results/e2e.jsonl"));
    let result = bench::run(
        &pipeline,
        &args.out,
        args.records,
        args.export_input.as_deref(),
        args.broker,
        args.partitions,
        usize::from(args.rounds),
    )
    .await
    .context("bench failed")?;
    println!("{result}");
    bench::append_result(&results, &result)
        .with_context(|| format!("appending to {}", results.display()))?;
    println!("appended to {}", results.display());
    Ok(ExitCode::SUCCESS)
}

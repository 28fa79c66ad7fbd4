//! `sluice backfill`: a pipeline over a bounded range of its topics (or over files), then
//! exit: 0 when complete, 3 when not (run it again with the same arguments).

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use sluice::backfill;
use sluice::source::bounded::{PartitionFilter, RangeSpec};
use sluice::telemetry::Stats;

#[derive(clap::Args)]
pub struct Args {
    /// The pipeline file (YAML).
    pipeline: PathBuf,
    /// From the first record at or after this time (RFC 3339 or a UTC date).
    #[arg(long, conflicts_with = "offsets")]
    from: Option<String>,
    /// Up to (not including) the first record at or after this time; default: the end
    /// of each partition at start.
    #[arg(long, conflicts_with = "offsets")]
    to: Option<String>,
    /// Explicit ranges instead: TOPIC:PARTITION=START..END (repeatable).
    #[arg(long)]
    offsets: Vec<String>,
    /// Read JSON-lines or Parquet files (a path or a glob, e.g. 'exports/*.jsonl' or
    /// 'old/**/*.parquet') instead of Kafka.
    #[arg(long, conflicts_with_all = ["from", "to", "offsets", "partitions", "shard"])]
    input: Option<String>,
    /// Only these partitions (e.g. `0-5`), to split a backfill across machines.
    #[arg(long, conflicts_with = "shard")]
    partitions: Option<String>,
    /// Only partitions p with p % COUNT == INDEX (`INDEX/COUNT`, e.g. a Kubernetes
    /// indexed Job's `$(JOB_COMPLETION_INDEX)/4`).
    #[arg(long)]
    shard: Option<String>,
    /// Write under this directory instead (the pipeline's `${SLUICE_OUT}`).
    #[arg(long)]
    out: Option<PathBuf>,
    /// No progress bars.
    #[arg(long)]
    quiet: bool,
    /// Write only these outputs: `parquet`, `kafka` (every sink and dead-letter target
    /// of that kind), `sinks[N]`, `dead_letter.parquet`, `dead_letter.delta`, `dead_letter.kafka`;
    /// comma-separated. E.g. `--sinks parquet` leaves the output topics alone.
    #[arg(long)]
    sinks: Option<String>,
    /// Serve /metrics and /health on HOST:PORT while it runs.
    #[arg(long, env = "SLUICE_METRICS_LISTEN")]
    metrics_listen: Option<String>,
    /// While storage is full, retry for this long before giving up.
    #[arg(long, env = "SLUICE_STORAGE_RETRY", default_value = "5m", value_parser = humantime::parse_duration)]
    storage_retry: std::time::Duration,
}

pub async fn execute(args: Args) -> anyhow::Result<ExitCode> {
    let mut pipeline = match super::load(&args.pipeline, args.out.as_deref(), args.metrics_listen) {
        Ok(pipeline) => pipeline,
        Err(code) => return Ok(code),
    };
    pipeline.storage_retry = args.storage_retry;
    if let Some(sinks) = &args.sinks {
        backfill::keep_sinks(&mut pipeline, sinks)?;
    }
    let spec = if args.offsets.is_empty() {
        RangeSpec::Times {
            from: args.from.as_deref().map(backfill::parse_time).transpose()?,
            to: args.to.as_deref().map(backfill::parse_time).transpose()?,
        }
    } else {
        let ranges = args.offsets.iter().map(|o| backfill::parse_offsets(o));
        RangeSpec::Offsets(ranges.collect::<Result<_, _>>()?)
    };
    let filter = match (&args.partitions, &args.shard) {
        (Some(list), _) => PartitionFilter::Only(backfill::parse_partitions(list)?),
        (None, Some(shard)) => backfill::parse_shard(shard)?,
        (None, None) => PartitionFilter::All,
    };
    let shutdown = super::signal::shutdown_on_signal();
    let stats = Arc::new(Stats::default());
    let progress = !args.quiet;
    let summary = match &args.input {
        Some(pattern) => backfill::run_files(&pipeline, pattern, shutdown, stats, progress).await,
        None => backfill::run(&pipeline, &spec, &filter, shutdown, stats, progress).await,
    }
    .with_context(|| format!("backfill of `{}` failed", pipeline.name()))?;
    println!("{summary}");
    Ok(if summary.complete {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(3)
    })
}

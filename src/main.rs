//! The `sluice` command line: run, validate, demo, bench, retrain.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;

use sluice::demo::{bench, feeds::feedback};
use sluice::source::bounded::{PartitionFilter, RangeSpec};
use sluice::telemetry::{self, init_logging, status, Stats};
use sluice::{backfill, config, demo, pipeline, retrain, runtime};

#[derive(Parser)]
#[command(
    name = "sluice",
    version,
    about = "Kafka -> Arrow -> Parquet/Kafka stream pipelines"
)]
struct Cli {
    /// Log as one JSON object per line.
    #[arg(long, global = true)]
    log_json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a pipeline until SIGINT/SIGTERM, then drain, commit and exit 0.
    Run {
        /// The pipeline file (YAML).
        pipeline: PathBuf,
        /// Serve /metrics and /health on HOST:PORT (overrides the file's `metrics.listen`).
        #[arg(long, env = "SLUICE_METRICS_LISTEN")]
        metrics_listen: Option<String>,
        /// While storage is full, retry for this long (with backoff, `/health` saying
        /// why) before exiting.
        #[arg(long, env = "SLUICE_STORAGE_RETRY", default_value = "5m", value_parser = humantime::parse_duration)]
        storage_retry: std::time::Duration,
    },
    /// Run a pipeline over a bounded range of its topics (by record time or offsets), then
    /// exit: 0 only when every partition reached its end. No consumer-group commits, so a
    /// live pipeline is not disturbed; a killed backfill rerun with the same arguments
    /// finishes without duplicates.
    Backfill {
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
        /// of that kind), `sinks[N]`, `dead_letter.parquet`, `dead_letter.kafka`;
        /// comma-separated. E.g. `--sinks parquet` leaves the output topics alone.
        #[arg(long)]
        sinks: Option<String>,
        /// Serve /metrics and /health on HOST:PORT while it runs.
        #[arg(long, env = "SLUICE_METRICS_LISTEN")]
        metrics_listen: Option<String>,
        /// While storage is full, retry for this long before giving up.
        #[arg(long, env = "SLUICE_STORAGE_RETRY", default_value = "5m", value_parser = humantime::parse_duration)]
        storage_retry: std::time::Duration,
    },
    /// Check pipeline files (and `retrain-*.yaml` job files); report every error; exit
    /// non-zero if any is invalid.
    Validate {
        #[arg(required = true)]
        pipelines: Vec<PathBuf>,
    },
    /// Run the whole flow on an in-process Kafka cluster with generated feedback (or, for
    /// `--pipeline sentiment`, replayed real reviews).
    Demo {
        /// A pipeline name in pipelines/ (`demo`, `sentiment`) or a file.
        #[arg(long, default_value = "sentiment")]
        pipeline: PathBuf,
        /// Output directory (the pipeline's `${SLUICE_OUT}`). Default: out/NAME.
        #[arg(long)]
        out: Option<PathBuf>,
        /// Records to produce. Default: 50000 generated, or 2000 replayed reviews.
        #[arg(long)]
        records: Option<u64>,
        /// Labelled reviews replayed for pipelines that tokenize text.
        #[arg(long, default_value = "data/reviews.jsonl")]
        reviews: PathBuf,
        /// Which split of the reviews or bearing recordings to replay: `holdout` or `train`.
        #[arg(long, default_value = "holdout")]
        split: String,
        /// The MFPT bearing recordings, replayed for pipelines that window `vibration`.
        #[arg(long, default_value = "data/signals")]
        signals: PathBuf,
        /// Fraction of records deliberately malformed.
        #[arg(long, default_value_t = 0.01)]
        malformed_rate: f64,
    },
    /// Produce generated customer feedback (JSON, ~1% malformed) to a Kafka topic at a
    /// steady rate, e.g. to feed a deployment of `pipelines/sentiment.yaml`.
    Generate {
        #[arg(long, env = "SLUICE_BROKERS", default_value = "localhost:9092")]
        brokers: String,
        #[arg(long, default_value = "customer-feedback")]
        topic: String,
        /// Records per second.
        #[arg(long, default_value_t = 100)]
        rate: u64,
        /// Stop after this many records (default: until SIGINT/SIGTERM).
        #[arg(long)]
        count: Option<u64>,
        #[arg(long, default_value_t = 0.01)]
        malformed_rate: f64,
    },
    /// Measure a pipeline's end-to-end throughput against the raw consume rate.
    Bench {
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
    },
    /// Show what a running pipeline is doing, from its /health and /metrics endpoint
    /// (`sluice run --metrics-listen`).
    Status {
        /// The endpoint's base URL.
        #[arg(default_value = "http://127.0.0.1:9464")]
        url: String,
        /// Redraw every DURATION (e.g. `2s`) with rates, until SIGINT.
        #[arg(long, value_parser = humantime::parse_duration)]
        watch: Option<std::time::Duration>,
    },
    /// Train a model version from a pipeline's Parquet dataset; publish it if it beats the
    /// serving version on the same holdout.
    Retrain {
        /// The retrain job file (YAML), e.g. pipelines/retrain-sentiment.yaml.
        job: PathBuf,
        /// Publish even if the candidate does not pass the gate.
        #[arg(long)]
        force: bool,
        /// Train and evaluate only; publish nothing.
        #[arg(long)]
        dry_run: bool,
        /// Run again every DURATION (e.g. `24h`) until SIGINT/SIGTERM.
        #[arg(long, value_parser = humantime::parse_duration, conflicts_with = "cron")]
        every: Option<std::time::Duration>,
        /// Run again at the times of a cron expression (UTC, e.g. "0 3 * * *").
        #[arg(long)]
        cron: Option<String>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging("info", cli.log_json);
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    let code = runtime.block_on(report(cli.command));
    // A blocking call still waiting (a broker that never answers) must not hold the exit.
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    code
}

async fn report(command: Command) -> ExitCode {
    match execute(command).await {
        Ok(code) => code,
        Err(error) => {
            let message = telemetry::causes(error.chain().map(ToString::to_string));
            eprintln!("error: {}", telemetry::secrets::redact(&message));
            ExitCode::FAILURE
        }
    }
}

async fn execute(command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::Run {
            pipeline,
            metrics_listen,
            storage_retry,
        } => {
            let mut pipeline = match pipeline::load(&pipeline) {
                Ok(pipeline) => pipeline,
                Err(error) => {
                    eprintln!("{error}");
                    return Ok(ExitCode::from(2));
                }
            };
            override_metrics_listen(&mut pipeline, metrics_listen);
            telemetry::secrets::hide(&pipeline.redactions);
            pipeline.storage_retry = storage_retry;
            let shutdown = CancellationToken::new();
            tokio::spawn(cancel_on_signal(shutdown.clone()));
            let stats = Arc::new(Stats::default());
            let summary = runtime::run(&pipeline, shutdown, stats)
                .await
                .with_context(|| format!("pipeline `{}` stopped", pipeline.name()))?;
            tracing::info!(?summary, "pipeline stopped cleanly");
            Ok(ExitCode::SUCCESS)
        }
        Command::Backfill {
            pipeline,
            from,
            to,
            offsets,
            input,
            partitions,
            shard,
            out,
            quiet,
            sinks,
            metrics_listen,
            storage_retry,
        } => {
            let loaded = match out {
                Some(out) => {
                    let out = out.display().to_string();
                    pipeline::load_with_vars(&pipeline, &|name| match name {
                        "SLUICE_OUT" => Some(out.clone()),
                        other => std::env::var(other).ok(),
                    })
                }
                None => pipeline::load(&pipeline),
            };
            let mut pipeline = match loaded {
                Ok(pipeline) => pipeline,
                Err(error) => {
                    eprintln!("{error}");
                    return Ok(ExitCode::from(2));
                }
            };
            override_metrics_listen(&mut pipeline, metrics_listen);
            telemetry::secrets::hide(&pipeline.redactions);
            pipeline.storage_retry = storage_retry;
            if let Some(sinks) = &sinks {
                backfill::keep_sinks(&mut pipeline, sinks)?;
            }
            let spec = if offsets.is_empty() {
                RangeSpec::Times {
                    from: from.as_deref().map(backfill::parse_time).transpose()?,
                    to: to.as_deref().map(backfill::parse_time).transpose()?,
                }
            } else {
                RangeSpec::Offsets(
                    offsets
                        .iter()
                        .map(|o| backfill::parse_offsets(o))
                        .collect::<Result<_, _>>()?,
                )
            };
            let filter = match (partitions, shard) {
                (Some(list), _) => PartitionFilter::Only(backfill::parse_partitions(&list)?),
                (None, Some(shard)) => backfill::parse_shard(&shard)?,
                (None, None) => PartitionFilter::All,
            };
            let shutdown = CancellationToken::new();
            tokio::spawn(cancel_on_signal(shutdown.clone()));
            let stats = Arc::new(Stats::default());
            let summary = match &input {
                Some(pattern) => {
                    backfill::run_files(&pipeline, pattern, shutdown, stats, !quiet).await
                }
                None => backfill::run(&pipeline, &spec, &filter, shutdown, stats, !quiet).await,
            }
            .with_context(|| format!("backfill of `{}` failed", pipeline.name()))?;
            println!("{summary}");
            Ok(if summary.complete {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(3)
            })
        }
        Command::Validate { pipelines } => {
            let mut failed = false;
            for file in &pipelines {
                let checked = if pipeline::job::is_job_file(file) {
                    pipeline::job::load(file, &|name| std::env::var(name).ok()).map(|_| ())
                } else {
                    pipeline::load(file).map(|_| ())
                };
                match checked {
                    Ok(()) => println!("{}: ok", file.display()),
                    Err(error) => {
                        failed = true;
                        eprintln!("{error}");
                    }
                }
            }
            Ok(if failed {
                ExitCode::FAILURE
            } else {
                ExitCode::SUCCESS
            })
        }
        Command::Demo {
            pipeline,
            out,
            records,
            malformed_rate,
            reviews,
            split,
            signals,
        } => {
            let pipeline = demo::pipeline_path(&pipeline);
            let stem = pipeline.file_stem().unwrap_or_default().to_string_lossy();
            let out = out.unwrap_or_else(|| PathBuf::from(format!("out/{stem}")));
            let options = demo::DemoOptions {
                pipeline,
                out,
                records,
                malformed_rate,
                reviews,
                split,
                signals,
            };
            let summary = demo::run(&options).await.context("demo failed")?;
            println!("{summary}");
            Ok(ExitCode::SUCCESS)
        }
        Command::Generate {
            brokers,
            topic,
            rate,
            count,
            malformed_rate,
        } => {
            let shutdown = CancellationToken::new();
            tokio::spawn(cancel_on_signal(shutdown.clone()));
            let produced =
                feedback::generate(&brokers, &topic, rate, count, malformed_rate, shutdown)
                    .await
                    .with_context(|| format!("producing to {topic} on {brokers}"))?;
            println!("produced {produced} records to {topic}");
            Ok(ExitCode::SUCCESS)
        }
        Command::Status { url, watch } => {
            let first = status::fetch(&url).await?;
            let Some(every) = watch else {
                print!("{}", status::render(&first, None));
                return Ok(ExitCode::SUCCESS);
            };
            let shutdown = CancellationToken::new();
            tokio::spawn(cancel_on_signal(shutdown.clone()));
            let mut before = first;
            loop {
                tokio::select! {
                    _ = tokio::time::sleep(every) => {}
                    _ = shutdown.cancelled() => return Ok(ExitCode::SUCCESS),
                }
                let now = status::fetch(&url).await?;
                // Clear the screen and draw from the top.
                print!("\x1b[2J\x1b[H{}", status::render(&now, Some(&before)));
                before = now;
            }
        }
        Command::Bench {
            pipeline,
            out,
            records,
            results,
            export_input,
        } => {
            let result = bench::run(
                &demo::pipeline_path(&pipeline),
                &out,
                records,
                export_input.as_deref(),
            )
            .await
            .context("bench failed")?;
            println!("{result}");
            bench::append_result(&results, &result)
                .with_context(|| format!("appending to {}", results.display()))?;
            println!("appended to {}", results.display());
            Ok(ExitCode::SUCCESS)
        }
        Command::Retrain {
            job,
            force,
            dry_run,
            every,
            cron,
        } => {
            let options = retrain::RetrainOptions { force, dry_run };
            let schedule = match (every, cron) {
                (Some(every), _) => Some(pipeline::schedule::Schedule::Every(every)),
                (None, Some(cron)) => {
                    Some(pipeline::schedule::Schedule::cron(&cron).map_err(anyhow::Error::msg)?)
                }
                (None, None) => None,
            };
            let stop = CancellationToken::new();
            tokio::spawn(cancel_on_signal(stop.clone()));
            loop {
                let loaded = pipeline::job::load(&job, &|name| std::env::var(name).ok())
                    .map_err(|e| anyhow::anyhow!("{e}"))?;
                let report = tokio::task::spawn_blocking({
                    let options = options.clone();
                    move || {
                        let bar = indicatif::ProgressBar::new(loaded.job.trainer.epochs as u64)
                            .with_style(
                                indicatif::ProgressStyle::with_template(
                                    "training {bar:30} {pos}/{len} epochs  loss {msg}  eta {eta}",
                                )
                                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
                            );
                        let report = retrain::run(&loaded, &options, |_, _, loss| {
                            bar.set_message(format!("{loss:.4}"));
                            bar.inc(1);
                        });
                        bar.finish_and_clear();
                        report
                    }
                })
                .await
                .context("retrain task failed")?
                .with_context(|| format!("retrain {} failed", job.display()))?;
                println!("{report}");
                let Some(schedule) = &schedule else { break };
                let delay = schedule
                    .delay_after(chrono::Utc::now())
                    .map_err(anyhow::Error::msg)?;
                tracing::info!(next_in = %humantime::format_duration(delay), "next retrain scheduled");
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = stop.cancelled() => break,
                }
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// `--metrics-listen` / `SLUICE_METRICS_LISTEN` (non-empty) replaces the file's
/// `metrics.listen`.
fn override_metrics_listen(pipeline: &mut pipeline::Pipeline, listen: Option<String>) {
    if let Some(listen) = listen.filter(|l| !l.is_empty()) {
        pipeline.config.metrics = Some(config::MetricsConfig { listen });
    }
}

/// Cancels `shutdown` on the first SIGINT or SIGTERM; exits at once (status 130) on the
/// second. Exiting mid-work is safe: nothing uncommitted is lost (it is read again on
/// restart), and a Parquet commit in progress is finished by the next start.
async fn cancel_on_signal(shutdown: CancellationToken) {
    signal().await;
    tracing::info!("shutdown requested (a second SIGINT/SIGTERM stops at once)");
    shutdown.cancel();
    signal().await;
    eprintln!("second signal: stopping now; uncommitted records are read again on restart");
    std::process::exit(130);
}

/// The next SIGINT or SIGTERM.
async fn signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match (
            signal(SignalKind::interrupt()),
            signal(SignalKind::terminate()),
        ) {
            (Ok(mut int), Ok(mut term)) => {
                tokio::select! {
                    _ = int.recv() => {}
                    _ = term.recv() => {}
                }
            }
            _ => {
                tracing::warn!("cannot listen for SIGTERM; only Ctrl-C stops the run");
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    let _ = tokio::signal::ctrl_c().await;
}

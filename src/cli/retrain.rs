//! `sluice retrain`: train, gate and publish a model version once, or on a schedule
//! (`--every`, `--cron`) with the same loop a pipeline's `retrain:` section uses.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use sluice::pipeline::{job, schedule};
use sluice::retrain::{self, RetrainOptions};
use sluice::telemetry;

#[derive(clap::Args)]
pub struct Args {
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
}

pub async fn execute(args: Args) -> anyhow::Result<ExitCode> {
    let options = RetrainOptions {
        force: args.force,
        dry_run: args.dry_run,
    };
    let schedule = match (args.every, &args.cron) {
        (Some(every), _) => Some(schedule::Schedule::Every(every)),
        (None, Some(cron)) => Some(schedule::Schedule::cron(cron)?),
        (None, None) => None,
    };
    let shutdown = super::signal::shutdown_on_signal();
    // A failed run ends the command when it runs once; on a schedule it is reported and
    // the next run still happens.
    let failure = std::cell::RefCell::new(None);
    let finished = std::cell::Cell::new(false);
    let run = || async {
        let outcome = once(&args.job, &options).await;
        finished.set(true);
        if let Err(error) = outcome {
            if schedule.is_some() {
                let message = telemetry::causes(error.chain().map(ToString::to_string));
                tracing::error!(error = %message, "retrain failed; the serving model stays");
            } else {
                failure.replace(Some(error));
            }
        }
    };
    schedule::repeat(schedule.as_ref(), true, &shutdown, run).await?;
    match failure.into_inner() {
        Some(error) => Err(error),
        // A single run cut off by a signal did not finish: nothing was published.
        None if schedule.is_none() && !finished.get() => Ok(ExitCode::from(130)),
        None => Ok(ExitCode::SUCCESS),
    }
}

/// One run: load the job (again, so edits apply), train with a progress bar, print the
/// report.
async fn once(file: &Path, options: &RetrainOptions) -> anyhow::Result<()> {
    let loaded = job::load(file, &|name| std::env::var(name).ok())?;
    let options = options.clone();
    let report = tokio::task::spawn_blocking(move || {
        let bar = indicatif::ProgressBar::new(loaded.job.trainer.epochs as u64).with_style(
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
    })
    .await
    .context("retrain task failed")?
    .with_context(|| format!("retrain {} failed", file.display()))?;
    println!("{report}");
    Ok(())
}

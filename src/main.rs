//! The `sluice` binary: parse the command line and dispatch to one module per command
//! (`cli/`). Everything a command does is in the library; errors are printed here with
//! each cause once and secrets hidden.

mod cli;

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use sluice::telemetry::{self, init_logging};

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
    Run(cli::run::Args),
    /// Run a pipeline over a bounded range of its topics (by record time or offsets), then
    /// exit: 0 only when every partition reached its end. No consumer-group commits, so a
    /// live pipeline is not disturbed; a killed backfill rerun with the same arguments
    /// finishes without duplicates.
    Backfill(cli::backfill::Args),
    /// Check pipeline files (and `retrain-*.yaml` job files); report every error; exit
    /// non-zero if any is invalid.
    Validate(cli::validate::Args),
    /// Run the whole flow on an in-process Kafka cluster with generated feedback (or, for
    /// `--pipeline sentiment`, replayed real reviews).
    Demo(sluice::demo::DemoOptions),
    /// Produce generated customer feedback (JSON, ~1% malformed) to a Kafka topic at a
    /// steady rate, e.g. to feed a deployment of `pipelines/sentiment.yaml`.
    Generate(cli::generate::Args),
    /// Measure a pipeline's end-to-end throughput against the raw consume rate.
    Bench(cli::bench::Args),
    /// Show what a running pipeline is doing, from its /health and /metrics endpoint
    /// (`sluice run --metrics-listen`).
    Status(cli::status::Args),
    /// Train a model version from a pipeline's Parquet dataset; publish it if it beats the
    /// serving version on the same holdout.
    Retrain(cli::retrain::Args),
    /// List a model registry, or copy one between a directory and an object store.
    Models(cli::models::Args),
    /// Fetch a subject's schema from a schema registry (`schema pull`).
    Schema(cli::schema::Args),
}

fn main() -> ExitCode {
    cli::memory::cap_malloc_arenas();
    let cli = Cli::parse();
    init_logging("info", cli.log_json);
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    let outcome = runtime.block_on(async {
        match cli.command {
            Command::Run(args) => cli::run::execute(args).await,
            Command::Backfill(args) => cli::backfill::execute(args).await,
            Command::Validate(args) => cli::validate::execute(args).await,
            Command::Demo(options) => cli::demo::execute(options).await,
            Command::Generate(args) => cli::generate::execute(args).await,
            Command::Bench(args) => cli::bench::execute(args).await,
            Command::Status(args) => cli::status::execute(args).await,
            Command::Retrain(args) => cli::retrain::execute(args).await,
            Command::Models(args) => cli::models::execute(args).await,
            Command::Schema(args) => cli::schema::execute(args).await,
        }
    });
    // A blocking call still waiting (a broker that never answers) must not hold the exit.
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    outcome.unwrap_or_else(|error| {
        let message = telemetry::causes(error.chain().map(ToString::to_string));
        eprintln!("error: {}", telemetry::secrets::redact(&message));
        ExitCode::FAILURE
    })
}

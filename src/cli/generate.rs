//! `sluice generate`: generated customer feedback to a topic at a steady rate.

use std::process::ExitCode;

use anyhow::Context;
use sluice::demo::feeds::feedback;

#[derive(clap::Args)]
pub struct Args {
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
}

pub async fn execute(args: Args) -> anyhow::Result<ExitCode> {
    let shutdown = super::signal::shutdown_on_signal();
    let Args {
        brokers,
        topic,
        rate,
        count,
        malformed_rate,
    } = args;
    let produced = feedback::generate(&brokers, &topic, rate, count, malformed_rate, shutdown)
        .await
        .with_context(|| format!("producing to {topic} on {brokers}"))?;
    println!("produced {produced} records to {topic}");
    Ok(ExitCode::SUCCESS)
}

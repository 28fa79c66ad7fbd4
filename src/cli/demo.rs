//! `sluice demo`: the whole flow on an in-process Kafka cluster (see `sluice::demo`).

use std::process::ExitCode;

use anyhow::Context;
use sluice::demo::{self, DemoOptions};

pub async fn execute(options: DemoOptions) -> anyhow::Result<ExitCode> {
    let summary = demo::run(&options).await.context("demo failed")?;
    println!("{summary}");
    Ok(ExitCode::SUCCESS)
}

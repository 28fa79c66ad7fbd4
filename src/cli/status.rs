//! `sluice status`: one screen from a running pipeline's `/health` and `/metrics`
//! (`sluice::telemetry::status`), redrawn with rates under `--watch`.

use std::process::ExitCode;

use sluice::telemetry::status;

#[derive(clap::Args)]
pub struct Args {
    /// The endpoint's base URL.
    #[arg(default_value = "http://127.0.0.1:9464")]
    url: String,
    /// Redraw every DURATION (e.g. `2s`) with rates, until SIGINT.
    #[arg(long, value_parser = humantime::parse_duration)]
    watch: Option<std::time::Duration>,
}

pub async fn execute(args: Args) -> anyhow::Result<ExitCode> {
    let first = status::fetch(&args.url).await?;
    let Some(every) = args.watch else {
        print!("{}", status::render(&first, None));
        return Ok(ExitCode::SUCCESS);
    };
    let shutdown = super::signal::shutdown_on_signal();
    let mut before = first;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = shutdown.cancelled() => return Ok(ExitCode::SUCCESS),
        }
        let now = status::fetch(&args.url).await?;
        // Clear the screen and draw from the top.
        print!("\x1b[2J\x1b[H{}", status::render(&now, Some(&before)));
        before = now;
    }
}

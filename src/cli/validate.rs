//! `sluice validate`: check pipeline files and retrain job files, report every error,
//! exit 1 if any is invalid.

use std::path::PathBuf;
use std::process::ExitCode;

use sluice::pipeline::{self, job};

#[derive(clap::Args)]
pub struct Args {
    #[arg(required = true)]
    files: Vec<PathBuf>,
}

pub async fn execute(args: Args) -> anyhow::Result<ExitCode> {
    let mut failed = false;
    for file in &args.files {
        let checked = if job::is_job_file(file) {
            job::load(file, &|name| std::env::var(name).ok()).map(drop)
        } else {
            pipeline::load(file).map(drop)
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

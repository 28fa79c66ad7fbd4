//! `sluice schema pull`: a subject's schema from a schema registry, printed as the file
//! `decode.schema` takes (`sluice schema pull orders-value --registry URL > schemas/orders.avsc`).
//! Basic auth from `SCHEMA_REGISTRY_USERNAME` / `SCHEMA_REGISTRY_PASSWORD` when set.

use std::process::ExitCode;

use sluice::config::SchemaRegistryConfig;
use sluice::schema_registry::SchemaRegistry;

#[derive(clap::Args)]
pub struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Subcommand)]
enum Command {
    /// Print a subject's schema (Avro JSON, pretty) for `decode.schema`.
    Pull {
        /// The subject, e.g. `customer-feedback-value`.
        subject: String,
        /// The registry's base URL.
        #[arg(long, env = "SCHEMA_REGISTRY_URL")]
        registry: String,
        /// A version number, or `latest`.
        #[arg(long, default_value = "latest")]
        version: String,
    },
}

pub async fn execute(args: Args) -> anyhow::Result<ExitCode> {
    let Command::Pull {
        subject,
        registry,
        version,
    } = args.command;
    let config = SchemaRegistryConfig {
        url: registry,
        username: std::env::var("SCHEMA_REGISTRY_USERNAME").ok(),
        password: std::env::var("SCHEMA_REGISTRY_PASSWORD").ok(),
        bearer_token: None,
        timeout: std::time::Duration::from_secs(10),
    };
    let registry = SchemaRegistry::new(&config)?;
    let found = registry.subject_version(&subject, &version).await?;
    if found.schema_type != "AVRO" {
        anyhow::bail!(
            "subject `{subject}` holds a {} schema; decode.schema takes Avro",
            found.schema_type
        );
    }
    let parsed: serde_json::Value = serde_json::from_str(&found.schema)?;
    println!("{}", serde_json::to_string_pretty(&parsed)?);
    Ok(ExitCode::SUCCESS)
}

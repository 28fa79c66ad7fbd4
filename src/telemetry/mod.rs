//! What a running pipeline tells its operator: logs, counters and metrics, and the HTTP
//! endpoint that serves them.
//!
//! - [`stats`]: the pipeline's counters and histograms ([`Stats`]), shared by the source,
//!   the stages and the sinks; the run summaries, the tests and `/metrics` read them.
//! - [`http`]: `/metrics` (Prometheus text format) and `/health` on a configurable port.
//! - [`status`]: `sluice status`, a terminal view of another process's endpoint.

pub mod http;
pub mod stats;
pub mod status;

pub use stats::{Readiness, Stats, StatsSnapshot};

use tracing_subscriber::EnvFilter;

/// Sets up `tracing` to stderr (ONNX Runtime's own log at warn and above, it is noisy).
/// `RUST_LOG` overrides the default level; `json` switches
/// to one JSON object per line for log shippers.
pub fn init_logging(default_level: &str, json: bool) {
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new(format!("{default_level},rdkafka=warn,ort=warn")));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    // A second initialisation (tests) keeps the first subscriber.
    let _ = if json {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
}

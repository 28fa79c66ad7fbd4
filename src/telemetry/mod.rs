//! What a running pipeline tells its operator: logs, counters and metrics, and the HTTP
//! endpoint that serves them.
//!
//! - [`stats`]: the pipeline's counters and histograms ([`Stats`]), shared by the source,
//!   the stages and the sinks; the run summaries, the tests and `/metrics` read them.
//! - [`health`]: what `/health` answers (start-up steps, problems such as failed
//!   authentication or a full disk).
//! - [`secrets`]: secrets kept out of logs, printed errors, `/metrics` and `/health`.
//! - [`throttle`]: rate-limited logging of repeated problems.
//! - [`http`]: `/metrics` (Prometheus text format) and `/health` on a configurable port.
//! - [`status`]: `sluice status`, a terminal view of another process's endpoint.

pub mod health;
pub mod http;
mod labels;
pub mod secrets;
pub mod stats;
pub mod status;
pub mod throttle;

pub use health::Readiness;
pub use stats::{Stats, StatsSnapshot};

use tracing_subscriber::EnvFilter;

/// Sets up `tracing` to stderr (ONNX Runtime's and the Delta kernel's own logs at warn and
/// above: they are noisy).
/// `RUST_LOG` overrides the default level; `json` switches
/// to one JSON object per line for log shippers.
pub fn init_logging(default_level: &str, json: bool) {
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new(format!(
            "{default_level},rdkafka=warn,ort=warn,delta_kernel=warn,delta_kernel_default_engine=warn"
        )));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(secrets::RedactingStderr);
    // A second initialisation (tests) keeps the first subscriber.
    let _ = if json {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
}

/// An error and its causes, each printed once: a cause whose text the message already
/// holds (a library that writes its source into its own message) is left out, so a
/// chain reads `writing Parquet: No space left on device (os error 28)`, not the same
/// cause three times.
pub fn causes<I, S>(messages: I) -> String
where
    I: IntoIterator<Item = S>,
    S: AsRef<str>,
{
    let mut out = String::new();
    for message in messages {
        let message = message.as_ref().trim();
        if message.is_empty() || out.contains(message) {
            continue;
        }
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(message);
    }
    out
}

/// [`causes`] of an error's source chain.
pub(crate) fn chain(error: &(dyn std::error::Error + 'static)) -> String {
    causes(std::iter::successors(Some(error), |e| e.source()).map(ToString::to_string))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("writing Parquet: {0}")]
    struct Outer(#[source] std::io::Error);

    #[test]
    fn each_cause_is_printed_once() {
        let error = Outer(std::io::Error::other(
            "No space left on device (os error 28)",
        ));
        assert_eq!(
            chain(&error),
            "writing Parquet: No space left on device (os error 28)"
        );
        assert_eq!(
            causes([
                "creating the consumer",
                "Unsupported SASL mechanism: X",
                "X"
            ]),
            "creating the consumer: Unsupported SASL mechanism: X"
        );
        assert_eq!(causes(["a", "b"]), "a: b");
    }
}

//! Records the demo, the benches and the tests feed to topics; not engine parts.
//!
//! - [`feedback`]: generated customer feedback (about 1% malformed) and the producer
//!   helpers every feed uses;
//! - [`reviews`]: real held-out reviews replayed as customer feedback;
//! - sensor feeds for the predictive-maintenance pipelines, as records of
//!   `schemas/sensor_readings.json`: [`mfpt`], real bearing vibration recordings replayed
//!   as chunks per machine, and [`ai4i`], process data generated from the AI4I 2020
//!   dataset's published rules. They are keyed by `machine_id`, so one machine's readings
//!   stay in one partition and in order; timestamps are event times.

pub mod ai4i;
pub mod feedback;
pub mod mfpt;
pub mod reviews;

use feedback::SampleRecord;

/// Formats epoch milliseconds as RFC 3339 with milliseconds (what `timestamp_ms` parses).
pub fn rfc3339_ms(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|t| t.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string())
        .unwrap_or_default()
}

/// A record of `value` keyed by `machine_id` at event time `ts_ms`.
fn record(machine_id: &str, ts_ms: i64, value: &serde_json::Value) -> SampleRecord {
    SampleRecord {
        key: machine_id.to_owned(),
        payload: value.to_string().into_bytes(),
        timestamp_ms: ts_ms,
        well_formed: true,
    }
}

//! Logging setup and the pipeline's running counters.
//!
//! [`Stats`] are plain atomics shared by the source, the decoder and the sinks; the
//! summary printed by `sluice run` and `sluice demo`, and the tests, read them.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Mutex;

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

/// Counters of one pipeline run.
#[derive(Debug, Default)]
pub struct Stats {
    records_in: AtomicU64,
    bytes_in: AtomicU64,
    batches: AtomicU64,
    rows_decoded: AtomicU64,
    dead_letters: AtomicU64,
    parquet_files: AtomicU64,
    parquet_rows: AtomicU64,
    parquet_bytes: AtomicU64,
    kafka_messages: AtomicU64,
    /// `STAGE=DEVICE` for each infer stage, once the chain is built.
    inference_devices: Mutex<Vec<String>>,
}

/// A point-in-time copy of [`Stats`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct StatsSnapshot {
    pub records_in: u64,
    pub bytes_in: u64,
    pub batches: u64,
    pub rows_decoded: u64,
    pub dead_letters: u64,
    pub parquet_files: u64,
    pub parquet_rows: u64,
    pub parquet_bytes: u64,
    pub kafka_messages: u64,
}

impl Stats {
    pub fn record_batch_in(&self, records: u64, bytes: u64) {
        self.batches.fetch_add(1, Relaxed);
        self.records_in.fetch_add(records, Relaxed);
        self.bytes_in.fetch_add(bytes, Relaxed);
    }

    pub fn record_decoded(&self, rows: u64, dead_letters: u64) {
        self.rows_decoded.fetch_add(rows, Relaxed);
        self.dead_letters.fetch_add(dead_letters, Relaxed);
    }

    pub fn record_files(&self, files: u64, rows: u64, bytes: u64) {
        self.parquet_files.fetch_add(files, Relaxed);
        self.parquet_rows.fetch_add(rows, Relaxed);
        self.parquet_bytes.fetch_add(bytes, Relaxed);
    }

    pub fn record_messages(&self, messages: u64) {
        self.kafka_messages.fetch_add(messages, Relaxed);
    }

    pub fn set_inference_devices(&self, devices: Vec<String>) {
        if let Ok(mut held) = self.inference_devices.lock() {
            *held = devices;
        }
    }

    /// Where each infer stage runs (`stages[1].infer=cuda:0`), once the chain is built.
    pub fn inference_devices(&self) -> Vec<String> {
        self.inference_devices
            .lock()
            .map(|held| held.clone())
            .unwrap_or_default()
    }

    /// Records consumed so far.
    pub fn records_in(&self) -> u64 {
        self.records_in.load(Relaxed)
    }

    pub fn snapshot(&self) -> StatsSnapshot {
        StatsSnapshot {
            records_in: self.records_in.load(Relaxed),
            bytes_in: self.bytes_in.load(Relaxed),
            batches: self.batches.load(Relaxed),
            rows_decoded: self.rows_decoded.load(Relaxed),
            dead_letters: self.dead_letters.load(Relaxed),
            parquet_files: self.parquet_files.load(Relaxed),
            parquet_rows: self.parquet_rows.load(Relaxed),
            parquet_bytes: self.parquet_bytes.load(Relaxed),
            kafka_messages: self.kafka_messages.load(Relaxed),
        }
    }
}

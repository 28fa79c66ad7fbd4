//! sluice's integration tests, in one test binary (one link of polars, arrow, ONNX
//! Runtime, tokenizers and librdkafka instead of one per file). Each module tells one part
//! of the user's story against real components: librdkafka's in-process mock cluster, a
//! broker process, real ONNX Runtime and models, and pyarrow/DuckDB reading the output.
//!
//! Run one part with `cargo test --test it backfill::`.

mod common;

mod backfill;
mod config_extremes;
mod config_files;
mod crash_noida;
mod delta;
mod demo_readers;
mod deploy_files;
mod drift;
mod finetune;
mod formats;
mod hostile;
mod inference;
mod latency;
mod live_accuracy;
mod maintenance;
mod metrics_endpoint;
mod mock_cluster;
mod object_storage;
mod operator;
mod protobuf;
mod retrain;
mod s3_registry;
mod secure_kafka;
mod sql_stage;

//! sluice: Kafka -> Arrow -> (stages) -> Parquet / Kafka stream pipelines, at least once
//! into Kafka and exactly once into Parquet.
//!
//! ```text
//!  Kafka topic(s) --> source --> decode --> [stages] --> sinks
//!  (consumer group)   micro-     JSON ->                 parquet (Hive-partitioned,
//!                     batches    Arrow                    rolled, atomic commits)
//!                     + offsets  bad -> dead letters      kafka topic(s), dead letters
//!       ^                                                          |
//!       +---- offsets committed only when every sink made a batch durable
//! ```
//!
//! A pipeline is a YAML file ([`config`]). [`runtime::run`] builds it: the Kafka
//! [`source`] cuts per-partition micro-batches ([`batch`]), [`decode`] turns JSON into
//! Arrow against a schema from `schemas/` ([`schema`]) and sends bad records to the
//! [`dead_letter`]s, the [`stage`]s tokenize, run ONNX models from the [`model`] registry
//! (hot-swapped while running) and enrich, and the [`sink`]s write Parquet datasets and
//! Kafka topics. The
//! [`ack`] tracker advances a partition's committable offset only over batches every
//! sink reported durable. [`demo`] runs the whole flow on an in-process Kafka cluster.

// Error enums carry the context a user needs (paths, topics, librdkafka errors); they are
// returned once per failed run, never per record, so their size is not worth boxing.
#![allow(clippy::result_large_err)]

pub mod ack;
pub mod backfill;
pub mod batch;
pub mod config;
pub mod dead_letter;
pub mod decode;
pub mod demo;
pub mod kafka_client;
pub mod model;
pub mod pipeline;
pub mod retrain;
pub mod runtime;
pub mod schema;
pub mod sink;
pub mod source;
pub mod stage;
pub mod telemetry;

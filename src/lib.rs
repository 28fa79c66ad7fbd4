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
//! Where each concept lives (one hop from here):
//!
//! - a pipeline file: [`config`] (serde types, `${VAR}`, key paths and lines), checked into a
//!   [`pipeline::Pipeline`] by [`pipeline`] (which also loads retrain jobs and schedules);
//! - running it: [`runtime::run`] (or [`backfill`] over a bounded range) wires the Kafka
//!   [`source`] (per-partition micro-batches, [`batch`]), [`decode`] (JSON or Avro -> Arrow
//!   against a [`schema`], Avro writer schemas from the [`schema_registry`], bad records ->
//!   [`batch::DeadLetter`]s), the [`stage`]s (sql, window,
//!   tokenize, infer with models from the [`model`] registry, enrich) and the [`sink`]s
//!   (Parquet with its commit protocol, Kafka topics, dead letters; [`dead_letter`] is the
//!   dead-letter dataset's layout);
//! - what gets committed: [`ack`] advances a partition's offset only over batches every
//!   sink reported durable;
//! - Kafka clients: [`kafka_client`] (configuration, checks, rate-limited events);
//! - models over time: [`retrain`] (dataset, trainer, ONNX export, gate, report);
//! - what an operator sees: [`telemetry`] (logs, `/metrics`, `/health`, `sluice status`,
//!   secrets kept out of all of them);
//! - trying it: [`demo`] (in-process cluster, bench, feeds); [`chart`] draws its PNGs and
//!   the retrain report's.
//!
//! Lower layers never import higher ones (`scripts/check_cycles.py`): `config` imports
//! nothing from the crate; components build from their own plans ([`stage::Plan`],
//! [`sink::Plan`]); `pipeline` composes them; `runtime` wires them.

// Error enums carry the context a user needs (paths, topics, librdkafka errors); they are
// returned once per failed run, never per record, so their size is not worth boxing.
#![allow(clippy::result_large_err)]

pub mod ack;
#[cfg(test)]
mod alloc_count;
pub mod backfill;
pub mod batch;
pub mod chart;
pub mod config;
pub mod dead_letter;
pub mod decode;
pub mod demo;
pub mod exactly_once;
pub mod kafka_client;
pub mod model;
pub mod pipeline;
pub mod proto;
pub mod retrain;
pub mod runtime;
pub mod schema;
pub mod schema_registry;
pub mod sink;
pub mod source;
pub mod stage;
pub mod storage;
pub mod telemetry;

//! librdkafka client configuration shared by the source and the Kafka sinks.
//!
//! sluice's defaults go in first and the pipeline's `properties` override them, so any
//! librdkafka property can be passed through; the few properties correctness depends on
//! are set last and cannot be overridden (validation rejects them with a reason).

use std::collections::BTreeMap;

use rdkafka::ClientConfig;

use crate::config::PropertyValue;

/// A client config: `bootstrap.servers`, then `defaults`, then the user's `properties`,
/// then `fixed`.
pub fn client_config(
    brokers: &str,
    defaults: &[(&str, &str)],
    properties: &BTreeMap<String, PropertyValue>,
    fixed: &[(&str, &str)],
) -> ClientConfig {
    let mut config = ClientConfig::new();
    config.set("bootstrap.servers", brokers);
    for (key, value) in defaults {
        config.set(*key, *value);
    }
    for (key, value) in properties {
        config.set(key, value.to_string());
    }
    for (key, value) in fixed {
        config.set(*key, *value);
    }
    config
}

/// Producer defaults: every write acknowledged by all in-sync replicas, idempotent
/// (no duplicates or reordering from librdkafka's own retries).
pub const PRODUCER_DEFAULTS: &[(&str, &str)] = &[
    ("acks", "all"),
    ("enable.idempotence", "true"),
    ("linger.ms", "5"),
    ("compression.type", "lz4"),
];

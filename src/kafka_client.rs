//! librdkafka clients: their configuration, what they report while running, and the
//! start-up check that a broker answers.
//!
//! Configuration: sluice's defaults go in first and the pipeline's `properties` override
//! them, so any librdkafka property can be passed through; the few properties correctness
//! depends on are set last and cannot be overridden (validation rejects them with a
//! reason).
//!
//! Every client runs with [`ClientEvents`] as (part of) its context: librdkafka's log
//! lines and global errors go to `tracing` rate-limited per kind (a broker outage is one
//! line per kind every 30 s with a count, not hundreds), errors are counted in
//! `sluice_kafka_errors_total{client,error}`, failed authentication and "all brokers
//! down" become `/health` problems, and librdkafka's statistics give
//! `sluice_kafka_brokers_up{client}` and clear those problems once a broker is up again.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use rdkafka::config::RDKafkaLogLevel;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::statistics::Statistics;
use rdkafka::{ClientConfig, ClientContext};

use crate::config::PropertyValue;
use crate::telemetry::throttle::Throttle;
use crate::telemetry::Stats;

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
    for (key, value) in properties.iter().filter(|(_, v)| v.is_set()) {
        config.set(key, value.to_string());
    }
    for (key, value) in fixed {
        config.set(*key, *value);
    }
    config
}

/// Producer defaults: every write acknowledged by all in-sync replicas, idempotent
/// (no duplicates or reordering from librdkafka's own retries), zstd (on our output rows
/// 0.08 of the uncompressed bytes on the wire against lz4's 0.20, for 2-6% fewer
/// messages/s: `cargo bench --bench compression`, benches/RESULTS.md), statistics for
/// `sluice_kafka_brokers_up`.
pub const PRODUCER_DEFAULTS: &[(&str, &str)] = &[
    ("acks", "all"),
    ("enable.idempotence", "true"),
    ("linger.ms", "5"),
    ("compression.type", "zstd"),
    ("statistics.interval.ms", "5000"),
];

/// What one client (`source`, `sinks[1].kafka`, ...) reports while it runs.
#[derive(Debug)]
pub struct ClientEvents {
    client: String,
    stats: Arc<Stats>,
    throttle: Throttle,
    /// The last error-level log line: the detail of an error event that comes without
    /// one (a consumer's errors arrive through `poll` as codes only).
    last_log: std::sync::Mutex<Option<String>>,
}

impl ClientEvents {
    pub fn new(client: impl Into<String>, stats: Arc<Stats>) -> Self {
        ClientEvents {
            client: client.into(),
            stats,
            throttle: Throttle::default(),
            last_log: Default::default(),
        }
    }

    fn problem_key(&self, what: &str) -> String {
        format!("{}: {what}", self.client)
    }

    /// A global error from librdkafka (it keeps retrying on its own). An empty `reason`
    /// is filled in from the client's last error-level log line.
    pub fn on_error(&self, error: KafkaError, reason: &str) {
        let logged;
        let reason = if reason.is_empty() {
            logged = self
                .last_log
                .lock()
                .ok()
                .and_then(|l| l.clone())
                .unwrap_or_else(|| error.to_string());
            logged.as_str()
        } else {
            reason
        };
        let code = error
            .rdkafka_error_code()
            .map_or_else(|| "other".to_owned(), code_name);
        self.stats.record_kafka_error(&self.client, &code);
        match error.rdkafka_error_code() {
            Some(RDKafkaErrorCode::Authentication)
            | Some(RDKafkaErrorCode::SaslAuthenticationFailed) => {
                self.stats.readiness.set_problem(
                    &self.problem_key("authentication"),
                    Some(format!("{}: authentication failed: {reason}", self.client)),
                );
            }
            Some(RDKafkaErrorCode::AllBrokersDown) => {
                self.stats.readiness.set_problem(
                    &self.problem_key("brokers"),
                    Some(format!("{}: no broker reachable: {reason}", self.client)),
                );
            }
            _ => {}
        }
        if let Some(repeats) = self.throttle.allow(&code) {
            tracing::error!(target: "rdkafka", client = %self.client, error = %code, repeats, "{reason}");
        }
    }

    /// A log line from librdkafka, rate-limited per facility and shape of message.
    pub fn on_log(&self, level: RDKafkaLogLevel, facility: &str, message: &str) {
        if is_error(level) {
            if let Ok(mut last) = self.last_log.lock() {
                *last = Some(message.to_owned());
            }
        }
        let shape: String = message
            .chars()
            .filter(|c| !c.is_ascii_digit())
            .take(80)
            .collect();
        let Some(repeats) = self.throttle.allow(&format!("{facility} {shape}")) else {
            return;
        };
        let client = &self.client;
        match level {
            RDKafkaLogLevel::Emerg
            | RDKafkaLogLevel::Alert
            | RDKafkaLogLevel::Critical
            | RDKafkaLogLevel::Error => {
                tracing::error!(target: "rdkafka", %client, facility, repeats, "{message}")
            }
            RDKafkaLogLevel::Warning => {
                tracing::warn!(target: "rdkafka", %client, facility, repeats, "{message}")
            }
            RDKafkaLogLevel::Notice | RDKafkaLogLevel::Info => {
                tracing::info!(target: "rdkafka", %client, facility, repeats, "{message}")
            }
            RDKafkaLogLevel::Debug => {
                tracing::debug!(target: "rdkafka", %client, facility, repeats, "{message}")
            }
        }
    }

    /// librdkafka's periodic statistics: brokers up, and problems that went away.
    pub fn on_stats(&self, statistics: &Statistics) {
        let up = statistics
            .brokers
            .values()
            .filter(|b| b.nodeid >= 0 && b.state == "UP")
            .count();
        self.stats.set_brokers_up(&self.client, up as i64);
        if up > 0 {
            self.stats
                .readiness
                .clear_problems(&format!("{}: ", self.client));
        }
    }
}

impl ClientContext for ClientEvents {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, log_message: &str) {
        self.on_log(level, fac, log_message);
    }

    fn stats(&self, statistics: Statistics) {
        self.on_stats(&statistics);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        self.on_error(error, reason);
    }
}

impl rdkafka::consumer::ConsumerContext for ClientEvents {}

fn is_error(level: RDKafkaLogLevel) -> bool {
    matches!(
        level,
        RDKafkaLogLevel::Emerg
            | RDKafkaLogLevel::Alert
            | RDKafkaLogLevel::Critical
            | RDKafkaLogLevel::Error
    )
}

/// A short, stable name for a librdkafka error code (`all_brokers_down`).
fn code_name(code: RDKafkaErrorCode) -> String {
    let debug = format!("{code:?}");
    let mut name = String::with_capacity(debug.len() + 4);
    for (i, c) in debug.chars().enumerate() {
        if c.is_ascii_uppercase() && i > 0 {
            name.push('_');
        }
        name.push(c.to_ascii_lowercase());
    }
    name
}

/// Why start-up could not reach a broker.
#[derive(Debug, thiserror::Error)]
#[error(
    "no Kafka broker answered at `{brokers}` ({key}) within {}{}",
    humantime::format_duration(*.timeout),
    .cause.as_ref().map(|c| format!(": {c}")).unwrap_or_default()
)]
pub struct Unreachable {
    pub brokers: String,
    /// The config key the brokers came from (`source.kafka.brokers`).
    pub key: String,
    pub timeout: Duration,
    /// What the client last reported (a refused connection, a failed TLS handshake that
    /// names `ssl.ca.location`, failed authentication).
    pub cause: Option<String>,
    #[source]
    pub source: KafkaError,
}

/// Fails unless a broker of `config`'s cluster answers a metadata request within
/// `timeout` (blocking: call from a blocking thread). The client is created with the
/// same properties (TLS, SASL) as the real one, so a wrong password or CA fails here too.
pub fn check_reachable(
    config: &ClientConfig,
    key: &str,
    timeout: Duration,
    events: Option<ClientEvents>,
) -> Result<(), Unreachable> {
    let brokers = config
        .get("bootstrap.servers")
        .unwrap_or_default()
        .to_owned();
    let mut probe = config.clone();
    // A consumer without a group: it never joins one.
    probe.remove("group.id");
    probe.remove("group.instance.id");
    let unreachable = |source, cause| Unreachable {
        brokers: brokers.clone(),
        key: key.to_owned(),
        timeout,
        cause,
        source,
    };
    let consumer: BaseConsumer<Probe> = probe
        .create_with_context(Probe {
            last: Default::default(),
            events,
        })
        .map_err(|e| unreachable(e, None))?;
    let deadline = std::time::Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        match consumer.fetch_metadata(None, left.min(Duration::from_secs(1))) {
            Ok(_) => return Ok(()),
            Err(error) => {
                // Error events (failed TLS handshake, refused login) wait in the queue.
                while let Some(event) = consumer.poll(Duration::ZERO) {
                    if let Err(e) = event {
                        consumer.context().error(e, "");
                    }
                }
                if left.is_zero() {
                    let cause = consumer.context().cause().map(|c| explain(&probe, c));
                    return Err(unreachable(error, cause));
                }
            }
        }
    }
}

/// `cause` with the setting to look at added where librdkafka's own line leaves it out:
/// only some of its messages for a failed certificate check name `ssl.ca.location`,
/// depending on where in the handshake it failed and which repeats it suppressed.
fn explain(config: &ClientConfig, cause: String) -> String {
    if !cause.contains("certificate verify failed") || cause.contains("ssl.ca.location") {
        return cause;
    }
    match config.get("ssl.ca.location") {
        Some(ca) => format!(
            "{cause} (the broker's certificate is not signed by a CA in ssl.ca.location `{ca}`)"
        ),
        None => format!(
            "{cause} (the broker's certificate is not signed by a system CA: set ssl.ca.location)"
        ),
    }
}

/// A context that keeps what a probing client last reported (and passes errors on to
/// `events`, so `/health` says why start-up waits).
#[derive(Debug)]
struct Probe {
    /// The last error-level log line (librdkafka says what failed there: a TLS handshake
    /// that names `ssl.ca.location`, a refused SASL login).
    last: std::sync::Mutex<Option<String>>,
    events: Option<ClientEvents>,
}

impl Probe {
    fn cause(&self) -> Option<String> {
        self.last.lock().ok().and_then(|l| l.clone())
    }
}

impl ClientContext for Probe {
    fn log(&self, level: RDKafkaLogLevel, _: &str, message: &str) {
        if is_error(level) {
            if let Ok(mut last) = self.last.lock() {
                *last = Some(message.to_owned());
            }
        }
    }
    fn error(&self, error: KafkaError, reason: &str) {
        let reason = match reason {
            "" => self.cause().unwrap_or_default(),
            given => given.to_owned(),
        };
        if let Some(events) = &self.events {
            events.on_error(error, &reason);
        }
    }
}
impl rdkafka::consumer::ConsumerContext for Probe {}

/// A problem with a client configuration: the property at fault when librdkafka names
/// one, and its message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigProblem {
    pub property: Option<String>,
    pub message: String,
}

/// Checks a client configuration the way librdkafka will use it, without connecting:
/// every property's name and value, then creating the client (which checks what only
/// makes sense together: SASL mechanisms, TLS files, codecs the build has). `producer`:
/// which kind of client.
pub fn check_config(config: &ClientConfig, producer: bool) -> Vec<ConfigProblem> {
    let mut problems = Vec::new();
    for (key, value) in config.config_map() {
        let mut one = ClientConfig::new();
        one.set(key, value);
        if let Err(error) = one.create_native_config() {
            let message = match error {
                KafkaError::ClientConfig(_, description, _, _) => description,
                other => other.to_string(),
            };
            problems.push(ConfigProblem {
                property: Some(key.to_string()),
                message,
            });
        }
    }
    if !problems.is_empty() {
        return problems;
    }
    let mut probe = config.clone();
    // No broker to connect to, no group to join: only the configuration is exercised.
    probe.remove("bootstrap.servers");
    probe.remove("group.id");
    probe.remove("group.instance.id");
    let created = if producer {
        probe
            .create_with_context::<_, rdkafka::producer::BaseProducer<Quiet>>(Quiet)
            .map(drop)
    } else {
        probe
            .create_with_context::<_, BaseConsumer<Quiet>>(Quiet)
            .map(drop)
    };
    if let Err(error) = created {
        let message = match error {
            KafkaError::ClientCreation(message) => message,
            other => other.to_string(),
        };
        problems.push(ConfigProblem {
            property: None,
            message,
        });
    }
    problems
}

/// A context that drops librdkafka's log lines (probes and configuration checks, whose
/// outcome is reported as an error).
#[derive(Debug, Clone, Copy, Default)]
pub struct Quiet;

impl ClientContext for Quiet {
    fn log(&self, _: RDKafkaLogLevel, _: &str, _: &str) {}
    fn error(&self, _: KafkaError, _: &str) {}
}
impl rdkafka::consumer::ConsumerContext for Quiet {}
impl rdkafka::producer::ProducerContext for Quiet {
    type DeliveryOpaque = ();
    fn delivery(&self, _: &rdkafka::message::DeliveryResult<'_>, _: Self::DeliveryOpaque) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_codes_get_snake_case_names() {
        assert_eq!(
            code_name(RDKafkaErrorCode::AllBrokersDown),
            "all_brokers_down"
        );
        assert_eq!(
            code_name(RDKafkaErrorCode::Authentication),
            "authentication"
        );
    }

    #[test]
    fn a_failed_certificate_check_names_the_ca_setting_whatever_librdkafka_said() {
        let short = "ssl://b:9093/bootstrap: error:0A000086:SSL routines::certificate verify failed (after 3ms in state SSL_HANDSHAKE)";
        let mut config = ClientConfig::new();
        let untouched = explain(&config, "Connection refused".into());
        assert_eq!(untouched, "Connection refused");
        assert!(explain(&config, short.into()).ends_with("set ssl.ca.location)"));
        config.set("ssl.ca.location", "/etc/ca.pem");
        let named = explain(&config, short.into());
        assert!(named.starts_with(short), "{named}");
        assert!(named.contains("ssl.ca.location `/etc/ca.pem`"), "{named}");
        let hinted = format!("{short}: verify that ssl.ca.location is correctly configured");
        assert_eq!(explain(&config, hinted.clone()), hinted);
    }

    #[test]
    fn bad_properties_are_found_without_a_broker_with_the_property_named() {
        let mut properties = BTreeMap::new();
        properties.insert("session.timeout.ms".into(), PropertyValue::Integer(-6000));
        properties.insert("no.such.property".into(), PropertyValue::Bool(true));
        let config = client_config("localhost:9092", &[], &properties, &[]);
        let problems = check_config(&config, false);
        let named: Vec<Option<&str>> = problems.iter().map(|p| p.property.as_deref()).collect();
        assert_eq!(
            named,
            vec![Some("no.such.property"), Some("session.timeout.ms")],
            "{problems:?}"
        );
        let mut properties = BTreeMap::new();
        properties.insert(
            "security.protocol".into(),
            PropertyValue::Text("sasl_plaintext".into()),
        );
        properties.insert("sasl.mechanism".into(), PropertyValue::Text("NOPE".into()));
        let config = client_config("localhost:9092", PRODUCER_DEFAULTS, &properties, &[]);
        let problems = check_config(&config, true);
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(problems[0].message.contains("NOPE"), "{problems:?}");
        let fine = client_config("localhost:9092", PRODUCER_DEFAULTS, &BTreeMap::new(), &[]);
        assert!(check_config(&fine, true).is_empty());
    }

    #[test]
    fn no_broker_fails_the_check_naming_the_brokers_and_key() {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let brokers = format!("127.0.0.1:{port}");
        let config = client_config(&brokers, &[], &BTreeMap::new(), &[]);
        let started = std::time::Instant::now();
        let error = check_reachable(
            &config,
            "source.kafka.brokers",
            Duration::from_millis(500),
            None,
        )
        .unwrap_err();
        assert!(started.elapsed() < Duration::from_secs(5));
        let message = error.to_string();
        assert!(
            message.starts_with(&format!(
                "no Kafka broker answered at `{brokers}` (source.kafka.brokers) within 500ms"
            )),
            "{message}"
        );
    }
}

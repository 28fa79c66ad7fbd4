//! `sluice status`: one screen of what a running pipeline is doing, read from its
//! `/health` and `/metrics` endpoint (the numbers Prometheus scrapes, nothing else), for an
//! operator at a terminal. With `--watch` it redraws and shows rates between scrapes.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::{Duration, Instant};

use prometheus_parse::{Sample, Value};

#[derive(Debug, thiserror::Error)]
pub enum StatusError {
    #[error("{url}: {source}")]
    Http {
        url: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("{url}: not Prometheus text format: {source}")]
    Parse {
        url: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{url}: HTTP {status}")]
    Status { url: String, status: u16 },
}

/// One reading of a pipeline's endpoint.
pub struct Scrape {
    pub ready: bool,
    /// `/health`'s body: `ready`, or what start-up is waiting for.
    pub health: String,
    samples: Vec<Sample>,
    at: Instant,
}

impl Scrape {
    /// From the bodies of `/metrics` and `/health`.
    pub fn parse(metrics: &str, ready: bool, health: &str) -> std::io::Result<Self> {
        let lines = metrics.lines().map(|l| Ok(l.to_owned()));
        Ok(Scrape {
            ready,
            health: health.trim().to_owned(),
            samples: prometheus_parse::Scrape::parse(lines)?.samples,
            at: Instant::now(),
        })
    }

    /// The sum of the samples of `name` (counters may carry `_total`) whose labels
    /// include every one of `labels`.
    pub fn sum(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.matching(name, labels).filter_map(scalar).sum()
    }

    /// Sums of `name` grouped by the values of the labels `by`, joined with `/`.
    pub fn by(&self, name: &str, by: &[&str]) -> BTreeMap<String, f64> {
        let mut groups = BTreeMap::new();
        for sample in self.matching(name, &[]) {
            let key: Vec<&str> = by
                .iter()
                .map(|label| sample.labels.get(label).unwrap_or("?"))
                .collect();
            *groups.entry(key.join("/")).or_insert(0.0) += scalar(sample).unwrap_or(0.0);
        }
        groups
    }

    /// The pipeline's name (every sample carries it).
    pub fn pipeline(&self) -> &str {
        self.samples
            .iter()
            .find_map(|s| s.labels.get("pipeline"))
            .unwrap_or("?")
    }

    fn matching<'a>(
        &'a self,
        name: &'a str,
        labels: &'a [(&str, &str)],
    ) -> impl Iterator<Item = &'a Sample> + 'a {
        self.samples.iter().filter(move |s| {
            (s.metric == name || s.metric.strip_suffix("_total") == Some(name))
                && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v))
        })
    }
}

fn scalar(sample: &Sample) -> Option<f64> {
    match sample.value {
        Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => Some(v),
        _ => None,
    }
}

/// Reads `/health` and `/metrics` under `base` (e.g. `http://127.0.0.1:9100`).
pub async fn fetch(base: &str) -> Result<Scrape, StatusError> {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .map_err(|source| StatusError::Http {
            url: base.to_owned(),
            source,
        })?;
    let get = |path: &str| {
        let url = format!("{}{path}", base.trim_end_matches('/'));
        let request = client.get(&url).send();
        async move {
            let response = request.await.map_err(|source| StatusError::Http {
                url: url.clone(),
                source,
            })?;
            let status = response.status().as_u16();
            let body = response.text().await.map_err(|source| StatusError::Http {
                url: url.clone(),
                source,
            })?;
            Ok::<_, StatusError>((url, status, body))
        }
    };
    let (_, health_status, health) = get("/health").await?;
    let (url, status, metrics) = get("/metrics").await?;
    if status != 200 {
        return Err(StatusError::Status { url, status });
    }
    Scrape::parse(&metrics, health_status == 200, &health)
        .map_err(|source| StatusError::Parse { url, source })
}

/// The status screen; rates when an earlier scrape is given.
///
/// Long on purpose: one screen drawn top to bottom, line by line.
pub fn render(now: &Scrape, before: Option<&Scrape>) -> String {
    let mut out = String::new();
    let rate = |name: &str| -> String {
        let Some(before) = before else {
            return String::new();
        };
        let seconds = now.at.duration_since(before.at).as_secs_f64();
        if seconds <= 0.0 {
            return String::new();
        }
        let per_second = (now.sum(name, &[]) - before.sum(name, &[])) / seconds;
        format!(" ({}/s)", count(per_second))
    };
    let _ = writeln!(out, "pipeline {}: {}", now.pipeline(), now.health);
    let _ = writeln!(
        out,
        "  records in {}{}   rows out {}{}   batches {}   dead letters {}",
        count(now.sum("sluice_records_in", &[])),
        rate("sluice_records_in"),
        count(now.sum("sluice_rows_out", &[])),
        rate("sluice_rows_out"),
        count(now.sum("sluice_batches", &[])),
        count(now.sum("sluice_dead_letters", &[])),
    );
    let dead = now.by("sluice_dead_letters", &["stage", "reason"]);
    if !dead.is_empty() {
        let _ = writeln!(out, "  dead letters by stage/reason: {}", list(&dead));
    }
    let skipped = now.by("sluice_records_skipped", &["topic", "partition", "reason"]);
    if !skipped.is_empty() {
        let total: f64 = skipped.values().sum();
        let _ = writeln!(
            out,
            "  RECORDS SKIPPED {} (never read: {})",
            count(total),
            list(&skipped)
        );
    }
    let rejected = now.by("sluice_sink_rejected", &["sink", "reason"]);
    if !rejected.is_empty() {
        let _ = writeln!(out, "  rows an output could not take: {}", list(&rejected));
    }
    let errors = now.by("sluice_kafka_errors", &["client", "error"]);
    if !errors.is_empty() {
        let _ = writeln!(out, "  Kafka client errors: {}", list(&errors));
    }
    let lag = now.by("sluice_consumer_lag", &["topic", "partition"]);
    if !lag.is_empty() {
        let total: f64 = lag.values().sum();
        let _ = writeln!(
            out,
            "  consumer lag {} ({})",
            count(total),
            list(&lag).replace("/", ":")
        );
    }
    for sample in now.matching("sluice_model_info", &[]) {
        let (stage, version) = (
            sample.labels.get("stage").unwrap_or("?"),
            sample.labels.get("version").unwrap_or("?"),
        );
        let _ = writeln!(
            out,
            "  model {stage} serves {} version {version}",
            sample.labels.get("model").unwrap_or("?"),
        );
        // Its drift, largest signal first (PSI; over 0.25 is a large shift).
        let of_version = [("stage", stage), ("version", version)];
        let mut drift: Vec<(f64, &str)> = now
            .matching("sluice_drift", &of_version)
            .filter_map(|s| Some((scalar(s)?, s.labels.get("signal")?)))
            .collect();
        drift.sort_by(|a, b| b.0.total_cmp(&a.0));
        if !drift.is_empty() {
            let shown: Vec<String> = drift
                .iter()
                .take(3)
                .map(|(psi, signal)| format!("{signal} {psi:.2}"))
                .collect();
            let flag = if drift[0].0 > 0.25 { "  DRIFT" } else { "" };
            let _ = writeln!(out, "    drift (PSI) {}{flag}", shown.join(", "));
        }
        // Its live accuracy on the last window of labelled rows.
        let live: Vec<(f64, &str)> = now
            .matching("sluice_live_accuracy", &of_version)
            .filter_map(|s| Some((scalar(s)?, s.labels.get("metric")?)))
            .collect();
        let metric = |name: &str| live.iter().find(|(_, m)| *m == name).map(|(v, _)| *v);
        if let (Some(accuracy), Some(f1)) = (metric("accuracy"), metric("macro_f1")) {
            let rows = now
                .matching("sluice_live_accuracy_window_rows", &of_version)
                .find_map(scalar)
                .unwrap_or(0.0);
            let _ = writeln!(
                out,
                "    live accuracy {accuracy:.3}, macro-F1 {f1:.3}, calibration error {:.3} ({} labelled rows)",
                metric("calibration_error").unwrap_or(f64::NAN),
                count(rows)
            );
        }
    }
    let rows_in = now.by("sluice_stage_rows_in", &["stage"]);
    if !rows_in.is_empty() {
        let rows_out = now.by("sluice_stage_rows_out", &["stage"]);
        let seconds = now.by("sluice_stage_seconds_sum", &["stage"]);
        let runs = now.by("sluice_stage_seconds_count", &["stage"]);
        let _ = writeln!(
            out,
            "  {:<24} {:>12} {:>12} {:>12}",
            "stage", "rows in", "rows out", "ms/batch"
        );
        for (stage, rows) in &rows_in {
            let mean_ms = match runs.get(stage) {
                Some(n) if *n > 0.0 => {
                    format!("{:.2}", seconds.get(stage).unwrap_or(&0.0) / n * 1e3)
                }
                _ => "-".into(),
            };
            let _ = writeln!(
                out,
                "  {:<24} {:>12} {:>12} {:>12}",
                stage,
                count(*rows),
                count(rows_out.get(stage).copied().unwrap_or(0.0)),
                mean_ms
            );
        }
    }
    let _ = writeln!(
        out,
        "  parquet {} files, {} rows, {}   kafka {} messages",
        count(now.sum("sluice_parquet_files", &[])),
        count(now.sum("sluice_parquet_rows", &[])),
        bytesize::ByteSize::b(now.sum("sluice_parquet_bytes", &[]) as u64),
        count(now.sum("sluice_kafka_messages", &[])),
    );
    let commits = now.by("sluice_commits", &["mode", "outcome"]);
    if !commits.is_empty() {
        let _ = writeln!(out, "  commits by mode/outcome: {}", list(&commits));
    }
    out
}

/// `1234567` as `1,234,567` (rounded).
pub fn count(value: f64) -> String {
    // `+ 0.0` turns the -0.0 of an empty float sum into 0.
    let digits = format!("{:.0}", value.max(0.0) + 0.0);
    let mut grouped = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            grouped.push(',');
        }
        grouped.push(c);
    }
    grouped
}

fn list(groups: &BTreeMap<String, f64>) -> String {
    groups
        .iter()
        .map(|(k, v)| format!("{k} {}", count(*v)))
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::telemetry::Stats;

    #[test]
    fn counts_are_grouped_by_thousands() {
        assert_eq!(count(0.0), "0");
        assert_eq!(count(std::iter::empty::<f64>().sum()), "0");
        assert_eq!(count(999.4), "999");
        assert_eq!(count(1_234_567.0), "1,234,567");
    }

    #[test]
    fn the_screen_shows_what_the_registry_exposes() {
        let stats = Arc::new(Stats::default());
        stats.record_files(2, 900, 4096);
        stats.record_model_serving("stages[1].infer", "sentiment-head", "3");
        stats.record_drift(
            "stages[1].infer",
            "sentiment-head",
            "3",
            1000,
            &[
                ("predicted".into(), 0.02),
                ("embedding_cosine".into(), 0.41),
            ],
        );
        stats.record_live_accuracy(
            "stages[1].infer",
            "sentiment-head",
            "3",
            500,
            &[
                ("accuracy", 0.812),
                ("macro_f1", 0.79),
                ("calibration_error", 0.041),
            ],
        );
        let registry = stats.registry("sentiment");
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        let scrape = Scrape::parse(&text, true, "ready\n").unwrap();
        assert_eq!(scrape.pipeline(), "sentiment");
        assert_eq!(scrape.sum("sluice_parquet_rows", &[]), 900.0);
        let screen = render(&scrape, Some(&scrape));
        assert!(
            screen.starts_with("pipeline sentiment: ready\n"),
            "{screen}"
        );
        assert!(
            screen.contains("model stages[1].infer serves sentiment-head version 3"),
            "{screen}"
        );
        assert!(screen.contains("parquet 2 files, 900 rows"), "{screen}");
        assert!(
            screen.contains("drift (PSI) embedding_cosine 0.41, predicted 0.02  DRIFT"),
            "{screen}"
        );
        assert!(
            screen.contains(
                "live accuracy 0.812, macro-F1 0.790, calibration error 0.041 (500 labelled rows)"
            ),
            "{screen}"
        );
    }
}

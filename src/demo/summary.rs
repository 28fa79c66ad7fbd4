//! What `sluice demo` prints: counts read back from the datasets, how far the written
//! labels agree with the known ones, and the alerts by machine.

use std::path::PathBuf;
use std::time::Duration;

use crate::telemetry::StatsSnapshot;

/// How well the labels written by the pipeline agree with the known true labels.
#[derive(Debug, Clone, Default)]
pub struct LabelReport {
    pub compared: u64,
    pub agreed: u64,
    pub versions: Vec<String>,
    /// Rows by (true label, written label).
    pub pairs: std::collections::BTreeMap<(String, String), usize>,
}

impl LabelReport {
    /// Accuracy, macro-F1 and per-class precision/recall of the written labels.
    pub fn metrics(&self) -> crate::model::metrics::Metrics {
        let mut labels: Vec<String> = self
            .pairs
            .keys()
            .flat_map(|(t, p)| [t.clone(), p.clone()])
            .collect();
        labels.sort();
        labels.dedup();
        let index = |l: &String| labels.iter().position(|x| x == l).unwrap_or(0);
        let mut confusion = vec![vec![0; labels.len()]; labels.len()];
        for ((truth, predicted), rows) in &self.pairs {
            confusion[index(truth)][index(predicted)] += rows;
        }
        crate::model::metrics::Metrics::from_confusion(&labels, confusion, f64::NAN)
    }
}

/// Machines named in the summary's alert line (the most alerted first).
const ALERT_MACHINES_SHOWN: usize = 8;

/// What `sluice demo` reports.
#[derive(Debug, Clone)]
pub struct DemoSummary {
    pub produced: u64,
    pub stats: StatsSnapshot,
    pub rows_read_back: u64,
    pub dead_letters_read_back: u64,
    pub elapsed: Duration,
    pub out: PathBuf,
    pub labels: Option<LabelReport>,
    /// Maintenance pipelines: alerts sent, by machine.
    pub alerts: Option<std::collections::BTreeMap<String, u64>>,
}

impl std::fmt::Display for DemoSummary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = &self.stats;
        let secs = self.elapsed.as_secs_f64();
        writeln!(f, "sluice demo summary")?;
        writeln!(f, "  records in         {:>10}", s.records_in)?;
        writeln!(
            f,
            "  rows written       {:>10}  (read back from Parquet: {})",
            s.rows_decoded, self.rows_read_back
        )?;
        writeln!(
            f,
            "  dead letters       {:>10}  (read back from Parquet: {})",
            s.dead_letters, self.dead_letters_read_back
        )?;
        writeln!(
            f,
            "  Parquet files      {:>10}  ({} bytes)",
            s.parquet_files, s.parquet_bytes
        )?;
        writeln!(f, "  Kafka messages out {:>10}", s.kafka_messages)?;
        if let Some(labels) = self.labels.as_ref().filter(|l| l.compared > 0) {
            let metrics = labels.metrics();
            writeln!(
                f,
                "  labels             {:>10}  agree with the known labels: {:.1}%, macro-F1 {:.3} (model {})",
                labels.compared,
                100.0 * labels.agreed as f64 / labels.compared.max(1) as f64,
                metrics.macro_f1,
                labels.versions.join(", ")
            )?;
            for class in metrics.per_class.iter().filter(|c| c.support > 0) {
                writeln!(
                    f,
                    "    {:<16} {:>8}  precision {:.1}%  recall {:.1}%",
                    class.label,
                    class.support,
                    100.0 * class.precision,
                    100.0 * class.recall
                )?;
            }
        }
        if let Some(alerts) = &self.alerts {
            let total: u64 = alerts.values().sum();
            let mut by_count: Vec<_> = alerts.iter().collect();
            by_count.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
            let shown = by_count
                .iter()
                .take(ALERT_MACHINES_SHOWN)
                .map(|(m, n)| format!("{m} ({n})"))
                .collect::<Vec<_>>()
                .join(", ");
            let more = alerts.len().saturating_sub(ALERT_MACHINES_SHOWN);
            writeln!(
                f,
                "  alerts             {total:>10}  from {} machines: {shown}{}",
                alerts.len(),
                if more > 0 {
                    format!(", and {more} more")
                } else {
                    String::new()
                }
            )?;
        }
        writeln!(f, "  elapsed            {:>10.2} s", secs)?;
        writeln!(
            f,
            "  throughput         {:>10.0} records/s",
            s.records_in as f64 / secs.max(1e-9)
        )?;
        write!(f, "  output             {}", self.out.display())
    }
}

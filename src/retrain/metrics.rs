//! Classification metrics on a holdout: accuracy, macro-F1, log-loss, per-class precision
//! and recall, and the confusion matrix (rows = true class, columns = predicted).

use serde::Serialize;

use crate::config::job::GateMetric;
use crate::model::argmax;

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ClassMetrics {
    pub label: String,
    pub precision: f64,
    pub recall: f64,
    pub f1: f64,
    pub support: usize,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Metrics {
    pub rows: usize,
    pub accuracy: f64,
    pub macro_f1: f64,
    pub log_loss: f64,
    pub per_class: Vec<ClassMetrics>,
    pub confusion: Vec<Vec<usize>>,
}

impl Metrics {
    /// `probabilities` is row-major `[rows, classes]`; `truth` holds class indices.
    pub fn compute(labels: &[String], truth: &[usize], probabilities: &[f32]) -> Metrics {
        let classes = labels.len();
        let mut confusion = vec![vec![0_usize; classes]; classes];
        let mut log_loss = 0.0;
        for (row, &t) in truth.iter().enumerate() {
            let p = &probabilities[row * classes..(row + 1) * classes];
            let predicted = argmax(p);
            confusion[t][predicted] += 1;
            log_loss -= f64::from(p[t].clamp(1e-7, 1.0)).ln();
        }
        Metrics::from_confusion(labels, confusion, log_loss / truth.len().max(1) as f64)
    }

    /// Metrics of hard predictions given as a confusion matrix (rows = true class,
    /// columns = predicted); `log_loss` is whatever the caller measured (NaN if none).
    pub(crate) fn from_confusion(
        labels: &[String],
        confusion: Vec<Vec<usize>>,
        log_loss: f64,
    ) -> Metrics {
        let classes = labels.len();
        let rows: usize = confusion.iter().flatten().sum();
        let correct: usize = (0..classes).map(|c| confusion[c][c]).sum();
        let per_class: Vec<ClassMetrics> = (0..classes)
            .map(|c| {
                let predicted: usize = (0..classes).map(|t| confusion[t][c]).sum();
                let support: usize = confusion[c].iter().sum();
                let ratio = |a: usize, b: usize| if b == 0 { 0.0 } else { a as f64 / b as f64 };
                let (precision, recall) = (
                    ratio(confusion[c][c], predicted),
                    ratio(confusion[c][c], support),
                );
                let f1 = if precision + recall == 0.0 {
                    0.0
                } else {
                    2.0 * precision * recall / (precision + recall)
                };
                ClassMetrics {
                    label: labels[c].clone(),
                    precision,
                    recall,
                    f1,
                    support,
                }
            })
            .collect();
        Metrics {
            rows,
            accuracy: correct as f64 / rows.max(1) as f64,
            macro_f1: per_class.iter().map(|c| c.f1).sum::<f64>() / classes.max(1) as f64,
            log_loss,
            per_class,
            confusion,
        }
    }

    /// The value of a gate metric; higher is better (log-loss is negated).
    pub fn score(&self, metric: GateMetric) -> f64 {
        match metric {
            GateMetric::Accuracy => self.accuracy,
            GateMetric::MacroF1 => self.macro_f1,
            GateMetric::LogLoss => -self.log_loss,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_of_a_small_known_case() {
        let labels = vec!["neg".to_owned(), "pos".to_owned()];
        // truth: neg, neg, pos, pos; predicted: neg, pos, pos, pos
        let probs = [0.9, 0.1, 0.4, 0.6, 0.2, 0.8, 0.3, 0.7];
        let m = Metrics::compute(&labels, &[0, 0, 1, 1], &probs);
        assert_eq!(m.confusion, vec![vec![1, 1], vec![0, 2]]);
        assert_eq!(m.accuracy, 0.75);
        assert!((m.per_class[1].precision - 2.0 / 3.0).abs() < 1e-12);
        assert_eq!(m.per_class[0].recall, 0.5);
        let f1_neg = 2.0 * 1.0 * 0.5 / 1.5;
        let f1_pos = 2.0 * (2.0 / 3.0) * 1.0 / (2.0 / 3.0 + 1.0);
        assert!((m.macro_f1 - (f1_neg + f1_pos) / 2.0).abs() < 1e-12);
        let ll = -(0.9_f64.ln() + 0.4_f64.ln() + 0.8_f64.ln() + 0.7_f64.ln()) / 4.0;
        assert!((m.log_loss - ll).abs() < 1e-6);
        assert!(m.score(GateMetric::LogLoss) < 0.0);
    }
}

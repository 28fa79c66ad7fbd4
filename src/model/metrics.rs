//! Classification metrics: accuracy, macro-F1, log-loss, per-class precision and recall,
//! the confusion matrix (rows = true class, columns = predicted), and the calibration
//! error. The retrain gate scores a holdout with them, live accuracy a window of labelled
//! predictions.

use serde::Serialize;

use super::argmax;
use crate::config::job::GateMetric;

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
            macro_f1: macro_f1(&per_class, &confusion),
            log_loss,
            per_class,
            confusion,
        }
    }

    /// The expected calibration error of top-class predictions: `(confidence, correct)`
    /// pairs in ten equal-width confidence bins, the row-weighted mean of |accuracy -
    /// mean confidence| per bin (0 when the confidences are the accuracies; 0 for no rows).
    pub fn calibration_error(predictions: impl IntoIterator<Item = (f64, bool)>) -> f64 {
        let mut bins = [(0_usize, 0.0_f64, 0.0_f64); 10];
        for (confidence, correct) in predictions {
            let confidence = confidence.clamp(0.0, 1.0);
            let bin = &mut bins[((confidence * 10.0) as usize).min(9)];
            bin.0 += 1;
            bin.1 += confidence;
            bin.2 += f64::from(u8::from(correct));
        }
        let rows: usize = bins.iter().map(|b| b.0).sum();
        let gap: f64 = bins.iter().map(|(_, conf, hits)| (hits - conf).abs()).sum();
        gap / rows.max(1) as f64
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

/// Mean F1 over the classes that occur among the true or the predicted classes (what
/// scikit-learn's `f1_score(average="macro")` does): a class absent from both would add a 0
/// that says nothing about the model. All classes when none occurs.
fn macro_f1(per_class: &[ClassMetrics], confusion: &[Vec<usize>]) -> f64 {
    let occurs = |c: usize| per_class[c].support > 0 || confusion.iter().any(|row| row[c] > 0);
    let present: Vec<f64> = (0..per_class.len())
        .filter(|&c| occurs(c))
        .map(|c| per_class[c].f1)
        .collect();
    if present.is_empty() {
        return 0.0;
    }
    present.iter().sum::<f64>() / present.len() as f64
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

    #[test]
    fn macro_f1_leaves_out_a_class_nobody_saw_and_calibration_error_is_the_bin_gap() {
        let labels = vec!["a".to_owned(), "b".to_owned(), "c".to_owned()];
        // Only a and b occur: c's zero F1 must not halve the mean.
        let m =
            Metrics::from_confusion(&labels, vec![vec![2, 0, 0], vec![0, 2, 0], vec![0; 3]], 0.0);
        assert_eq!(m.macro_f1, 1.0);
        // Bin 0.9: confidences 0.95, 0.95 with one hit (gap |1 - 1.9|); bin 0.6: 0.6, hit
        // (gap 0.4): (0.9 + 0.4) / 3.
        let ece = Metrics::calibration_error([(0.95, true), (0.95, false), (0.6, true)]);
        assert!((ece - 1.3 / 3.0).abs() < 1e-12, "{ece}");
        assert_eq!(Metrics::calibration_error([(0.8, true); 0]), 0.0);
    }
}

//! The retrain report picture: the candidate's confusion matrix on the holdout and, for two
//! classes, its ROC curve with the area under it. Drawn with plotters into a PNG beside the
//! published version (`report.png`, next to `report.json`).
//!
//! Text needs a TrueType font ([`crate::chart::font_ready`]); without one the picture is
//! drawn without text.

use std::path::Path;

use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use crate::chart::font_ready;
use crate::model::metrics::Metrics;

/// ROC points (false positive rate, true positive rate) of `scores` for the positive class,
/// and the area under the curve.
pub fn roc(truth: &[bool], scores: &[f32]) -> (Vec<(f64, f64)>, f64) {
    let mut order: Vec<usize> = (0..truth.len()).collect();
    order.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]));
    let positives = truth.iter().filter(|t| **t).count().max(1) as f64;
    let negatives = truth.iter().filter(|t| !**t).count().max(1) as f64;
    let (mut tp, mut fp) = (0.0, 0.0);
    let mut points = vec![(0.0, 0.0)];
    let mut i = 0;
    while i < order.len() {
        // Rows with equal scores move the curve together.
        let score = scores[order[i]];
        while i < order.len() && scores[order[i]] == score {
            if truth[order[i]] {
                tp += 1.0;
            } else {
                fp += 1.0;
            }
            i += 1;
        }
        points.push((fp / negatives, tp / positives));
    }
    let auc = points
        .windows(2)
        .map(|w| (w[1].0 - w[0].0) * (w[1].1 + w[0].1) / 2.0)
        .sum();
    (points, auc)
}

/// Draws the report picture.
///
/// Long on purpose: plotters drawing code for two panels (confusion matrix, ROC) on one
/// canvas.
pub fn draw(
    path: &Path,
    title: &str,
    metrics: &Metrics,
    labels: &[String],
    roc_curve: Option<(&[(f64, f64)], f64)>,
) -> Result<(), String> {
    let text = font_ready();
    let fail = |e: &dyn std::fmt::Display| e.to_string();
    let root = BitMapBackend::new(path, (1000, 480)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| fail(&e))?;
    let root = if text {
        root.titled(title, ("sans-serif", 20))
            .map_err(|e| fail(&e))?
    } else {
        root
    };
    let (left, right) = root.split_horizontally(500);

    let n = labels.len();
    let max = metrics
        .confusion
        .iter()
        .flatten()
        .copied()
        .max()
        .unwrap_or(1)
        .max(1) as f64;
    let mut chart = ChartBuilder::on(&left);
    chart.margin(20);
    if text {
        chart
            .caption(
                "confusion matrix (rows: true, columns: predicted)",
                ("sans-serif", 15),
            )
            .x_label_area_size(30)
            .y_label_area_size(80);
    }
    // Segmented axes (`0..n-1` gives n segments) put each label under the middle of its cell.
    let mut chart = chart
        .build_cartesian_2d((0..n - 1).into_segmented(), (0..n - 1).into_segmented())
        .map_err(|e| fail(&e))?;
    if text {
        let name = |v: &SegmentValue<usize>, flip: bool| match v {
            SegmentValue::CenterOf(i) if *i < n => labels
                .get(if flip { n - 1 - i } else { *i })
                .cloned()
                .unwrap_or_default(),
            _ => String::new(),
        };
        chart
            .configure_mesh()
            .disable_mesh()
            .x_label_formatter(&|v| name(v, false))
            .y_label_formatter(&|v| name(v, true))
            .x_labels(n + 1)
            .y_labels(n + 1)
            .draw()
            .map_err(|e| fail(&e))?;
    }
    for (t, row) in metrics.confusion.iter().enumerate() {
        for (p, &count) in row.iter().enumerate() {
            let shade = 1.0 - 0.85 * (count as f64 / max);
            let colour = RGBColor((255.0 * shade) as u8, (255.0 * shade) as u8, 255);
            let y = n - 1 - t;
            let cell = [
                (SegmentValue::Exact(p), SegmentValue::Exact(y)),
                (SegmentValue::Exact(p + 1), SegmentValue::Exact(y + 1)),
            ];
            chart
                .draw_series(std::iter::once(Rectangle::new(cell, colour.filled())))
                .map_err(|e| fail(&e))?;
            if text {
                let style = ("sans-serif", 22)
                    .into_font()
                    .color(if shade < 0.5 { &WHITE } else { &BLACK })
                    .pos(Pos::new(HPos::Center, VPos::Center));
                let centre = (SegmentValue::CenterOf(p), SegmentValue::CenterOf(y));
                chart
                    .draw_series(std::iter::once(Text::new(count.to_string(), centre, style)))
                    .map_err(|e| fail(&e))?;
            }
        }
    }

    if let Some((points, auc)) = roc_curve {
        let mut chart = ChartBuilder::on(&right);
        chart.margin(20);
        if text {
            chart
                .caption(
                    format!(
                        "ROC ({}), AUC {auc:.3}",
                        labels.get(1).cloned().unwrap_or_default()
                    ),
                    ("sans-serif", 15),
                )
                .x_label_area_size(30)
                .y_label_area_size(40);
        }
        let mut chart = chart
            .build_cartesian_2d(0.0..1.0, 0.0..1.0)
            .map_err(|e| fail(&e))?;
        if text {
            chart
                .configure_mesh()
                .x_desc("false positive rate")
                .y_desc("true positive rate")
                .draw()
                .map_err(|e| fail(&e))?;
        }
        chart
            .draw_series(LineSeries::new(
                vec![(0.0, 0.0), (1.0, 1.0)],
                BLACK.mix(0.3),
            ))
            .map_err(|e| fail(&e))?;
        chart
            .draw_series(LineSeries::new(
                points.iter().copied(),
                BLUE.stroke_width(2),
            ))
            .map_err(|e| fail(&e))?;
    }
    root.present().map_err(|e| fail(&e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roc_of_a_perfect_and_a_useless_ranking() {
        let truth = [true, true, false, false];
        let (_, perfect) = roc(&truth, &[0.9, 0.8, 0.2, 0.1]);
        assert!((perfect - 1.0).abs() < 1e-12);
        let (_, inverted) = roc(&truth, &[0.1, 0.2, 0.8, 0.9]);
        assert!(inverted.abs() < 1e-12);
        let (points, tied) = roc(&truth, &[0.5; 4]);
        assert_eq!(points, vec![(0.0, 0.0), (1.0, 1.0)]);
        assert!((tied - 0.5).abs() < 1e-12);
    }

    #[test]
    fn the_picture_is_a_png() {
        let dir = tempfile::tempdir().unwrap();
        let labels = vec!["negative".to_owned(), "positive".to_owned()];
        let metrics = Metrics::compute(
            &labels,
            &[0, 1, 1, 0],
            &[0.8, 0.2, 0.3, 0.7, 0.1, 0.9, 0.6, 0.4],
        );
        let (points, auc) = roc(&[false, true, true, false], &[0.2, 0.7, 0.9, 0.4]);
        let path = dir.path().join("report.png");
        draw(&path, "test", &metrics, &labels, Some((&points, auc))).unwrap();
        let bytes = std::fs::read(&path).unwrap();
        assert_eq!(&bytes[1..4], b"PNG");
    }
}

//! `sluice demo --drift-plot`: every infer stage's drift gauges of one run, window after
//! window, as a PNG.

use std::path::Path;

/// One line per (stage, version, signal): its PSI window after window.
pub(super) fn draw(
    path: &Path,
    pipeline: &str,
    history: &[crate::telemetry::stats::DriftWindow],
) -> std::io::Result<()> {
    const COLOURS: [plotters::style::RGBColor; 6] = [
        plotters::style::RGBColor(31, 119, 180),
        plotters::style::RGBColor(255, 127, 14),
        plotters::style::RGBColor(44, 160, 44),
        plotters::style::RGBColor(214, 39, 40),
        plotters::style::RGBColor(148, 103, 189),
        plotters::style::RGBColor(140, 86, 75),
    ];
    let mut lines: Vec<crate::chart::Line> = Vec::new();
    // x: the rows the stage had served with that version when the window closed, so that
    // stages with different window sizes line up.
    let mut served: std::collections::HashMap<(String, String), f64> = Default::default();
    for window in history {
        let key = (window.stage.clone(), window.version.clone());
        let n = served.entry(key).or_insert(0.0);
        *n += window.rows as f64;
        for (signal, psi) in &window.signals {
            let name = format!("{} v{} {signal}", window.model, window.version);
            let at = match lines.iter().position(|l| l.name == name) {
                Some(at) => at,
                None => {
                    lines.push(crate::chart::Line {
                        name,
                        points: Vec::new(),
                        colour: COLOURS[lines.len() % COLOURS.len()],
                    });
                    lines.len() - 1
                }
            };
            lines[at].points.push((*n, *psi));
        }
    }
    if lines.is_empty() {
        return Err(std::io::Error::other(format!(
            "--drift-plot: no drift window filled in this run (does a served version have a \
             reference profile, and were there `drift.window` rows?); {} not written",
            path.display()
        )));
    }
    crate::chart::lines(
        path,
        &format!("{pipeline}: drift (PSI) per window"),
        "rows served",
        "PSI against the reference profile",
        &lines,
    )
}

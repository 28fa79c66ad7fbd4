//! PNG charts: the TrueType font plotters draws text with, and line charts over time
//! (the latency bench's latency and memory, a drift run's gauges).
//!
//! Text needs a TrueType font: DejaVu Sans from Debian's `fonts-dejavu-core` (installed by
//! `scripts/setup.sh`), or the file named by `SLUICE_FONT`. Without one the picture is
//! drawn without text and a warning says so.

use std::path::Path;
use std::sync::OnceLock;

use plotters::prelude::*;

const FONT_PATHS: &[&str] = &[
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
];

/// Registers a system font for plotters once; false when none was found.
pub(crate) fn font_ready() -> bool {
    static READY: OnceLock<bool> = OnceLock::new();
    *READY.get_or_init(|| {
        let candidates = std::env::var("SLUICE_FONT").ok().into_iter().chain(FONT_PATHS.iter().map(|p| (*p).to_owned()));
        for path in candidates {
            if let Ok(bytes) = std::fs::read(&path) {
                let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
                if plotters::style::register_font("sans-serif", FontStyle::Normal, bytes).is_ok() {
                    return true;
                }
            }
        }
        tracing::warn!("no TrueType font found (install fonts-dejavu-core or set SLUICE_FONT); charts have no text");
        false
    })
}

/// One line of a chart: its legend name, its points and its colour.
pub struct Line {
    pub name: String,
    pub points: Vec<(f64, f64)>,
    pub colour: RGBColor,
}

/// Draws `lines` into a PNG at `path` (900x420), x and y ranges from the points (y from
/// 0), with `title` and the axis descriptions.
pub fn lines(
    path: &Path,
    title: &str,
    x_desc: &str,
    y_desc: &str,
    lines: &[Line],
) -> std::io::Result<()> {
    let fail =
        |e: &dyn std::fmt::Display| std::io::Error::other(format!("{}: {e}", path.display()));
    let text = font_ready();
    let root = BitMapBackend::new(path, (900, 420)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| fail(&e))?;
    let points = lines.iter().flat_map(|l| l.points.iter());
    let (mut x_max, mut y_max) = (1e-9_f64, 1e-9_f64);
    let mut x_min = f64::INFINITY;
    for (x, y) in points {
        x_min = x_min.min(*x);
        x_max = x_max.max(*x);
        y_max = y_max.max(*y);
    }
    if !x_min.is_finite() || x_min >= x_max {
        x_min = 0.0;
    }
    let mut chart = ChartBuilder::on(&root);
    chart.margin(15);
    if text {
        chart
            .caption(title, ("sans-serif", 18))
            .x_label_area_size(35)
            .y_label_area_size(60);
    }
    let mut chart = chart
        .build_cartesian_2d(x_min..x_max, 0.0..y_max * 1.08)
        .map_err(|e| fail(&e))?;
    if text {
        chart
            .configure_mesh()
            .x_desc(x_desc)
            .y_desc(y_desc)
            .draw()
            .map_err(|e| fail(&e))?;
    }
    for line in lines {
        let colour = line.colour;
        let series = chart
            .draw_series(LineSeries::new(
                line.points.iter().copied(),
                colour.stroke_width(2),
            ))
            .map_err(|e| fail(&e))?;
        if text {
            series.label(line.name.as_str()).legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 18, y)], colour.stroke_width(2))
            });
        }
    }
    if text {
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK.mix(0.4))
            .position(SeriesLabelPosition::UpperLeft)
            .draw()
            .map_err(|e| fail(&e))?;
    }
    root.present().map_err(|e| fail(&e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_line_chart_is_a_png_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("chart.png");
        let line = Line {
            name: "p99".into(),
            points: (0..50).map(|i| (f64::from(i), f64::from(i % 7))).collect(),
            colour: RED,
        };
        lines(&path, "latency", "s", "ms", &[line]).unwrap();
        let bytes = std::fs::read(&path).unwrap();
        assert_eq!(&bytes[1..4], b"PNG");
    }
}

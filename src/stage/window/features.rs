//! Window features: moments, shape factors, trend and spectral band power of the values
//! that fell into one window.
//!
//! Statistics are population statistics (divide by n), the convention of vibration
//! analysis: kurtosis is Pearson's m4/m2² (3 for a normal distribution, far higher for the
//! impulses of a damaged bearing). A window whose values do not vary has std, skew,
//! kurtosis and slope 0 rather than NaN, so a model never sees NaN.

use std::sync::{Arc, Mutex};

use rustfft::num_complex::Complex;
use rustfft::{Fft, FftPlanner};

use crate::config::{BandConfig, WindowFeature};

/// Central moments and extremes of a series, from one pass over it.
#[derive(Debug, Clone, Copy)]
struct Moments {
    n: f64,
    mean: f64,
    m2: f64,
    m3: f64,
    m4: f64,
    min: f64,
    max: f64,
    mean_square: f64,
}

impl Moments {
    fn of(values: &[f64]) -> Moments {
        let n = values.len() as f64;
        let mean = values.iter().sum::<f64>() / n.max(1.0);
        let (mut m2, mut m3, mut m4, mut squares) = (0.0, 0.0, 0.0, 0.0);
        let (mut min, mut max) = (f64::INFINITY, f64::NEG_INFINITY);
        for &v in values {
            let d = v - mean;
            let d2 = d * d;
            m2 += d2;
            m3 += d2 * d;
            m4 += d2 * d2;
            squares += v * v;
            min = min.min(v);
            max = max.max(v);
        }
        let n1 = n.max(1.0);
        Moments {
            n,
            mean,
            m2: m2 / n1,
            m3: m3 / n1,
            m4: m4 / n1,
            min,
            max,
            mean_square: squares / n1,
        }
    }
}

/// Computes `features` of `values` observed at `times` (seconds, any origin, same length).
/// An empty window gives 0 for every feature but `count`.
pub fn compute(features: &[WindowFeature], values: &[f64], times: &[f64]) -> Vec<f64> {
    if values.is_empty() {
        return features
            .iter()
            .map(|_| 0.0) // count is 0 too
            .collect();
    }
    let m = Moments::of(values);
    let rms = m.mean_square.sqrt();
    let peak = m.max.abs().max(m.min.abs());
    let flat = m.m2 <= f64::EPSILON * m.mean_square.max(f64::MIN_POSITIVE);
    features
        .iter()
        .map(|feature| match feature {
            WindowFeature::Mean => m.mean,
            WindowFeature::Std => m.m2.sqrt(),
            WindowFeature::Rms => rms,
            WindowFeature::Min => m.min,
            WindowFeature::Max => m.max,
            WindowFeature::Peak => peak,
            WindowFeature::Crest if rms > 0.0 => peak / rms,
            WindowFeature::Crest => 0.0,
            WindowFeature::Kurtosis if !flat => m.m4 / (m.m2 * m.m2),
            WindowFeature::Skew if !flat => m.m3 / m.m2.powf(1.5),
            WindowFeature::Kurtosis | WindowFeature::Skew => 0.0,
            WindowFeature::Slope => slope(values, times),
            WindowFeature::Count => m.n,
        })
        .collect()
}

/// Least-squares slope of `values` over `times`; 0 when the times do not vary.
fn slope(values: &[f64], times: &[f64]) -> f64 {
    let n = values.len() as f64;
    let mean_t = times.iter().sum::<f64>() / n;
    let mean_v = values.iter().sum::<f64>() / n;
    let (mut cov, mut var) = (0.0, 0.0);
    for (&t, &v) in times.iter().zip(values) {
        cov += (t - mean_t) * (v - mean_v);
        var += (t - mean_t) * (t - mean_t);
    }
    if var > 0.0 {
        cov / var
    } else {
        0.0
    }
}

/// FFT plans by length, shared by every window of a stage (planning is the slow part).
#[derive(Clone)]
pub struct Spectra {
    planner: Arc<Mutex<FftPlanner<f64>>>,
}

impl Default for Spectra {
    fn default() -> Self {
        Spectra {
            planner: Arc::new(Mutex::new(FftPlanner::new())),
        }
    }
}

impl Spectra {
    fn plan(&self, len: usize) -> Arc<dyn Fft<f64>> {
        self.planner
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .plan_fft_forward(len)
    }

    /// Power (mean square) of `samples`, taken at `sample_rate` per second, in each band
    /// `[low_hz, high_hz)`: the one-sided power spectrum summed over the band's bins, so
    /// the bands of the whole spectrum add up to the mean square (Parseval). The mean is
    /// removed first, so a DC offset does not leak into the lowest band.
    pub fn band_power(&self, samples: &[f64], sample_rate: f64, bands: &[BandConfig]) -> Vec<f64> {
        let n = samples.len();
        if n < 2 || sample_rate <= 0.0 {
            return vec![0.0; bands.len()];
        }
        let mean = samples.iter().sum::<f64>() / n as f64;
        let mut buffer: Vec<Complex<f64>> = samples
            .iter()
            .map(|&v| Complex::new(v - mean, 0.0))
            .collect();
        self.plan(n).process(&mut buffer);
        let scale = 1.0 / (n as f64 * n as f64);
        let power = |k: usize| {
            let p = buffer[k].norm_sqr() * scale;
            // Positive and negative frequencies, except DC and Nyquist which appear once.
            if k == 0 || (n.is_multiple_of(2) && k == n / 2) {
                p
            } else {
                2.0 * p
            }
        };
        let resolution = sample_rate / n as f64;
        bands
            .iter()
            .map(|band| {
                let first = (band.low_hz / resolution).ceil().max(0.0) as usize;
                let end = ((band.high_hz / resolution).ceil() as usize).min(n / 2 + 1);
                (first..end).map(power).sum()
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::WindowFeature::*;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() <= 1e-9 * (1.0 + a.abs().max(b.abs()))
    }

    #[test]
    fn moments_and_shape_factors() {
        let values = [1.0, 2.0, 3.0, 4.0, 10.0];
        let times = [0.0, 1.0, 2.0, 3.0, 4.0];
        let all = [
            Mean, Std, Rms, Min, Max, Peak, Crest, Kurtosis, Skew, Slope, Count,
        ];
        let got = compute(&all, &values, &times);
        let mean = 4.0;
        let m2 = values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / 5.0;
        let m3 = values.iter().map(|v| (v - mean).powi(3)).sum::<f64>() / 5.0;
        let m4 = values.iter().map(|v| (v - mean).powi(4)).sum::<f64>() / 5.0;
        let rms = (values.iter().map(|v| v * v).sum::<f64>() / 5.0).sqrt();
        let expected = [
            mean,
            m2.sqrt(),
            rms,
            1.0,
            10.0,
            10.0,
            10.0 / rms,
            m4 / (m2 * m2),
            m3 / m2.powf(1.5),
            2.0, // cov(t, v) / var(t) = 20 / 10
            5.0,
        ];
        for ((feature, g), e) in all.iter().zip(&got).zip(expected) {
            assert!(close(*g, e), "{feature:?}: {g} != {e}");
        }
    }

    #[test]
    fn constant_and_empty_windows_give_no_nan() {
        let got = compute(&[Std, Kurtosis, Skew, Slope, Crest], &[2.0; 4], &[1.0; 4]);
        assert_eq!(got, [0.0, 0.0, 0.0, 0.0, 1.0]);
        let empty = compute(&[Mean, Count, Kurtosis], &[], &[]);
        assert_eq!(empty, [0.0, 0.0, 0.0]);
    }

    #[test]
    fn band_power_finds_a_tone_and_sums_to_the_variance() {
        let rate = 1000.0;
        let samples: Vec<f64> = (0..1000)
            .map(|i| 3.0 + 2.0 * (2.0 * std::f64::consts::PI * 50.0 * i as f64 / rate).sin())
            .collect();
        let band = |name: &str, low_hz, high_hz| BandConfig {
            name: name.into(),
            low_hz,
            high_hz,
        };
        let bands = [
            band("tone", 45.0, 55.0),
            band("rest", 55.0, 500.1),
            band("all", 0.0, 500.1),
        ];
        let power = Spectra::default().band_power(&samples, rate, &bands);
        // A sine of amplitude 2 has mean square 2; the DC offset is removed.
        assert!(close(power[0], 2.0), "{power:?}");
        assert!(power[1] < 1e-12, "{power:?}");
        assert!(close(power[2], 2.0), "{power:?}");
    }
}

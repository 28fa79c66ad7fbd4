//! Drift of the serving model version against the reference profile in its manifest
//! (written by `sluice retrain`, see [`crate::model::Profile`]).
//!
//! Over tumbling windows of `window` rows per version, the stage counts the same
//! statistics the profile holds, and when a window is full it publishes the population
//! stability index (PSI) of each signal as `sluice_drift{stage,model,version,signal}`:
//!
//! - `predicted`: the predicted-class mix against the holdout's;
//! - `top_score`: the top probability's histogram in tenths against the holdout's;
//! - `feature:NAME`: a numeric input's values in the profile's decile bins (each held
//!   10% of the holdout);
//! - `embedding_cosine`: a vector input's cosine similarity to the training centroid, in
//!   the profile's decile bins.
//! - `tokens`: for a model fed token ids, the number of tokens per row (the non-zero
//!   entries of the first input's lists), in the profile's bins.
//!
//! PSI = sum over bins of (live - reference) * ln(live / reference), shares smoothed by
//! 1e-4; under 0.1 is usually read as no shift, over 0.25 as a large one.
//!
//! Events, with hysteresis per version and signal like the alert sink: a signal rising
//! above `raise_above` *raises* drift (logged at WARN, counted, sent as a JSON row to
//! `drift.topic` when set, and waking a `retrain: {on_drift: true}` job); it *clears* once
//! a window falls below `clear_below`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use arrow::array::{Array, ArrayRef, AsArray, FixedSizeListArray};
use arrow::datatypes::{DataType, Float32Type};

use crate::config::DriftConfig;
use crate::model::{BinnedProfile, Profile, Registry};
use crate::telemetry::Stats;

/// Shares below this are taken as this (PSI's logarithm needs no zero).
const SMOOTHING: f64 = 1e-4;

/// PSI of `live` counts against `reference` shares.
pub fn psi(live: &[u64], reference: &[f64]) -> f64 {
    let total = live.iter().sum::<u64>().max(1) as f64;
    live.iter()
        .zip(reference)
        .map(|(&count, &expected)| {
            let actual = (count as f64 / total).max(SMOOTHING);
            let expected = expected.max(SMOOTHING);
            (actual - expected) * (actual / expected).ln()
        })
        .sum()
}

/// The bin of `value` among ten cut by `deciles` (nine ascending edges).
fn bin(value: f64, deciles: &[f64]) -> usize {
    deciles.partition_point(|edge| *edge <= value)
}

/// Counts of one version's current window.
#[derive(Debug, Default)]
struct Window {
    /// The count vectors are sized to the profile.
    sized: bool,
    rows: u64,
    predicted: Vec<u64>,
    top_score: Vec<u64>,
    features: Vec<Vec<u64>>,
    cosine: Vec<u64>,
    tokens: Vec<u64>,
}

/// What the stage knows to measure drift with.
pub struct DriftMonitor {
    stage: String,
    model: String,
    config: DriftConfig,
    events: super::topic_rows::TopicRows,
    registry: Registry,
    stats: Arc<Stats>,
    /// The column feeding the profiled input (a vector column, or the stacked numeric
    /// columns in the profile's feature order), by index into the stage's input rows.
    inputs: Vec<usize>,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    /// Profiles by version label (`None`: the version has none).
    profiles: HashMap<String, Option<Arc<Profile>>>,
    windows: HashMap<String, Window>,
    /// (version label, signal) pairs whose drift is raised.
    raised: std::collections::HashSet<(String, String)>,
}

impl DriftMonitor {
    /// `producer`: the configuration events go out with when `config.topic` is set.
    pub fn new(
        stage: String,
        model: String,
        config: DriftConfig,
        producer: &rdkafka::ClientConfig,
        registry: Registry,
        stats: Arc<Stats>,
        inputs: Vec<usize>,
    ) -> Result<Self, rdkafka::error::KafkaError> {
        let events = super::topic_rows::TopicRows::new(config.topic.as_deref(), producer)?;
        Ok(DriftMonitor {
            stage,
            model,
            config,
            events,
            registry,
            stats,
            inputs,
            state: Mutex::default(),
        })
    }

    fn profile(&self, state: &mut State, label: &str) -> Option<Arc<Profile>> {
        state
            .profiles
            .entry(label.to_owned())
            .or_insert_with(|| {
                let (name, version) = label.rsplit_once('/')?;
                let manifest = self
                    .registry
                    .manifest(&self.registry.version(name, version));
                manifest.ok()?.profile.map(Arc::new)
            })
            .clone()
    }

    /// Counts a batch the version `label` inferred: `input_rows` are the stage's input
    /// rows, `probabilities` the model's probabilities column (a fixed-size list).
    pub fn observe(&self, label: &str, input_rows: &[ArrayRef], probabilities: Option<&ArrayRef>) {
        if self.config.window == 0 {
            return;
        }
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let Some(profile) = self.profile(&mut state, label) else {
            return;
        };
        let window = state.windows.entry(label.to_owned()).or_default();
        if !window.sized {
            window.sized = true;
            window.predicted = vec![0; profile.predicted.len()];
            window.top_score = vec![0; 10];
            window.features = vec![vec![0; 10]; profile.features.len()];
            window.cosine = vec![0; 10];
            window.tokens = vec![0; profile.tokens.as_ref().map_or(0, |t| t.shares.len())];
        }
        let rows = input_rows.first().map_or(0, |c| c.len());
        if let Some(list) = probabilities.and_then(|p| p.as_fixed_size_list_opt()) {
            count_predictions(window, list);
        }
        let columns: Vec<&ArrayRef> = self
            .inputs
            .iter()
            .filter_map(|&i| input_rows.get(i))
            .collect();
        if let (Some(tokens), Some(column)) = (&profile.tokens, columns.first()) {
            count_tokens(window, column, tokens);
        }
        if let Some(embedding) = &profile.embedding {
            if let Some(list) = columns.first().and_then(|c| c.as_fixed_size_list_opt()) {
                count_cosine(window, list, &embedding.centroid, &embedding.cosine_deciles);
            }
        } else {
            for (j, feature) in profile.features.iter().enumerate() {
                let Some(column) = columns.get(j) else { break };
                let Ok(values) = arrow::compute::cast(column, &DataType::Float64) else {
                    continue;
                };
                for value in values
                    .as_primitive::<arrow::datatypes::Float64Type>()
                    .iter()
                    .flatten()
                {
                    window.features[j][bin(value, &feature.deciles)] += 1;
                }
            }
        }
        window.rows += rows as u64;
        if window.rows < self.config.window as u64 {
            return;
        }
        let full = std::mem::take(window);
        let mut signals = Vec::new();
        // An encoder's profile has no predictions, only what it is fed.
        if !profile.predicted.is_empty() {
            signals.push((
                "predicted".to_owned(),
                psi(&full.predicted, &profile.predicted),
            ));
            signals.push((
                "top_score".to_owned(),
                psi(&full.top_score, &profile.top_score),
            ));
        }
        let uniform = [0.1; 10];
        for (feature, counts) in profile.features.iter().zip(&full.features) {
            signals.push((format!("feature:{}", feature.name), psi(counts, &uniform)));
        }
        if profile.embedding.is_some() {
            signals.push(("embedding_cosine".to_owned(), psi(&full.cosine, &uniform)));
        }
        if let Some(tokens) = &profile.tokens {
            signals.push(("tokens".to_owned(), psi(&full.tokens, &tokens.shares)));
        }
        let version = label.rsplit_once('/').map_or(label, |(_, v)| v);
        tracing::debug!(stage = %self.stage, version, rows = full.rows, ?signals, "drift window");
        self.stats
            .record_drift(&self.stage, &self.model, version, full.rows, &signals);
        let mut raised_any = false;
        for (signal, psi) in &signals {
            let key = (label.to_owned(), signal.clone());
            let state_now = if *psi > self.config.raise_above && !state.raised.contains(&key) {
                state.raised.insert(key);
                "raised"
            } else if *psi < self.config.clear_below && state.raised.remove(&key) {
                "cleared"
            } else {
                continue;
            };
            raised_any |= state_now == "raised";
            self.event(version, signal, *psi, full.rows, state_now);
        }
        if raised_any {
            // One wake-up per window, however many signals rose in it.
            self.stats.record_drift_raised();
        }
    }

    /// Reports a drift event: log, metric, topic row, and a wake-up for retraining.
    fn event(&self, version: &str, signal: &str, psi: f64, rows: u64, state: &str) {
        if state == "raised" {
            tracing::warn!(stage = %self.stage, model = %self.model, version, signal, psi, rows, "drift raised: the stream no longer looks like this version's training data");
        } else {
            tracing::info!(stage = %self.stage, model = %self.model, version, signal, psi, rows, "drift cleared");
        }
        self.stats.record_drift_event(&self.stage, signal, state);
        let row = serde_json::json!({
            "stage": self.stage,
            "model": self.model,
            "version": version,
            "signal": signal,
            "psi": psi,
            "window_rows": rows,
            "state": state,
            "raise_above": self.config.raise_above,
            "clear_below": self.config.clear_below,
            "at": chrono::Utc::now().to_rfc3339(),
        });
        let key = format!("{}/{version}", self.model);
        self.events.send(&self.stage, &key, &row);
    }
}

fn count_predictions(window: &mut Window, list: &FixedSizeListArray) {
    let classes = list.value_length() as usize;
    let values = list.values().as_primitive_opt::<Float32Type>();
    let Some(values) = values else { return };
    for row in 0..list.len() {
        if list.is_null(row) {
            continue;
        }
        let start = row * classes;
        let probabilities = &values.values()[start..start + classes];
        let best = crate::model::argmax(probabilities);
        if let Some(count) = window.predicted.get_mut(best) {
            *count += 1;
        }
        let top = f64::from(probabilities[best]).clamp(0.0, 1.0);
        window.top_score[((top * 10.0) as usize).min(9)] += 1;
    }
}

fn count_cosine(window: &mut Window, list: &FixedSizeListArray, centroid: &[f32], deciles: &[f64]) {
    let width = list.value_length() as usize;
    let Some(values) = list.values().as_primitive_opt::<Float32Type>() else {
        return;
    };
    if width != centroid.len() {
        return;
    }
    for row in 0..list.len() {
        if list.is_null(row) {
            continue;
        }
        let vector = &values.values()[row * width..(row + 1) * width];
        let similarity = crate::model::cosine(vector, centroid);
        window.cosine[bin(similarity, deciles)] += 1;
    }
}

/// Counts the rows of a list column of token ids (or an attention mask) by their number of
/// tokens: the non-zero entries, since the tokenize stage pads a micro-batch to its
/// longest row with 0 (BERT's `[PAD]`).
fn count_tokens(window: &mut Window, column: &ArrayRef, profile: &BinnedProfile) {
    let (offsets, values): (Vec<usize>, &ArrayRef) = match column.data_type() {
        DataType::List(_) => {
            let list = column.as_list::<i32>();
            let offsets = list.value_offsets().iter().map(|&o| o as usize).collect();
            (offsets, list.values())
        }
        DataType::LargeList(_) => {
            let list = column.as_list::<i64>();
            let offsets = list.value_offsets().iter().map(|&o| o as usize).collect();
            (offsets, list.values())
        }
        _ => return,
    };
    let Ok(values) = arrow::compute::cast(values, &DataType::Int64) else {
        return;
    };
    let values = values
        .as_primitive::<arrow::datatypes::Int64Type>()
        .values();
    for (row, bounds) in offsets.windows(2).enumerate() {
        if column.is_null(row) {
            continue;
        }
        let tokens = values[bounds[0]..bounds[1]]
            .iter()
            .filter(|&&v| v != 0)
            .count();
        if let Some(count) = window.tokens.get_mut(profile.bin(tokens as f64)) {
            *count += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_counts_fall_into_the_profiles_bins() {
        let mut window = Window {
            sized: true,
            tokens: vec![0; 10],
            ..Default::default()
        };
        // Short texts repeat lengths: edges repeat, the shares say what each bin held.
        let profile = BinnedProfile {
            edges: vec![10.0, 10.0, 10.0, 20.0, 20.0, 30.0, 40.0, 50.0, 90.0],
            shares: vec![0.0, 0.0, 0.3, 0.0, 0.2, 0.1, 0.1, 0.1, 0.1, 0.1],
        };
        // Padded to the longest row with 0, as the tokenize stage does.
        let rows = [5_usize, 15, 15, 95, 200];
        let list = arrow::array::ListArray::from_iter_primitive::<arrow::datatypes::Int64Type, _, _>(
            rows.iter().map(|&n| {
                let mut ids = vec![Some(101_i64); n];
                ids.resize(200, Some(0));
                Some(ids)
            }),
        );
        let column: ArrayRef = Arc::new(list);
        count_tokens(&mut window, &column, &profile);
        assert_eq!(window.tokens, [1, 0, 0, 2, 0, 0, 0, 0, 0, 2]);
        // The same mix as the reference scores 0; long texts only, a large shift.
        assert!(psi(&[0, 0, 30, 0, 20, 10, 10, 10, 10, 10], &profile.shares).abs() < 1e-9);
        assert!(psi(&[0, 0, 0, 0, 0, 0, 0, 0, 0, 50], &profile.shares) > 0.5);
    }

    #[test]
    fn psi_is_zero_for_the_reference_and_large_for_a_shift() {
        let reference = [0.1; 10];
        assert!(psi(&[100; 10], &reference).abs() < 1e-12);
        let shifted = [0, 0, 0, 0, 0, 0, 0, 0, 500, 500];
        assert!(psi(&shifted, &reference) > 1.0);
        assert_eq!(bin(-5.0, &[0.0, 1.0]), 0);
        assert_eq!(bin(0.0, &[0.0, 1.0]), 1);
        assert_eq!(bin(7.0, &[0.0, 1.0]), 2);
    }
}

//! Alerts with hysteresis for the `kafka` sink's `alert` setting: only rows whose score
//! rises above `raise_above` while their key is not already alerting are sent; the key's
//! alert clears once its score falls below `clear_below`. One fault therefore gives one
//! message, not one per window, and a score hovering around one threshold does not flap.

use std::collections::HashMap;

use arrow::array::{Array, AsArray, BooleanArray, RecordBatch};
use arrow::compute::cast;
use arrow::datatypes::{DataType, Float64Type};
use arrow::error::ArrowError;

use crate::config::AlertConfig;

/// Per-key alert state of one sink.
#[derive(Debug)]
pub struct Hysteresis {
    config: AlertConfig,
    alerting: HashMap<String, bool>,
}

impl Hysteresis {
    pub fn new(config: AlertConfig) -> Self {
        Hysteresis {
            config,
            alerting: HashMap::new(),
        }
    }

    /// Which rows of `rows` raise an alert (rows are taken in order; state carries over).
    pub fn raises(&mut self, rows: &RecordBatch) -> Result<BooleanArray, ArrowError> {
        let column = |name: &str| {
            rows.column_by_name(name)
                .ok_or_else(|| ArrowError::SchemaError(format!("alert column `{name}` missing")))
        };
        let scores = cast(column(&self.config.score)?, &DataType::Float64)?;
        let scores = scores.as_primitive::<Float64Type>();
        let keys = cast(column(&self.config.key)?, &DataType::Utf8)?;
        let keys = keys.as_string::<i32>();
        let mut raised = Vec::with_capacity(rows.num_rows());
        for row in 0..rows.num_rows() {
            if scores.is_null(row) || keys.is_null(row) {
                raised.push(false);
                continue;
            }
            let score = scores.value(row);
            let alerting = self
                .alerting
                .entry(keys.value(row).to_owned())
                .or_insert(false);
            let raise = !*alerting && score > self.config.raise_above;
            if raise {
                *alerting = true;
            } else if *alerting && score < self.config.clear_below {
                *alerting = false;
            }
            raised.push(raise);
        }
        Ok(BooleanArray::from(raised))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow::array::{Float32Array, StringArray};

    use super::*;

    #[test]
    fn one_alert_per_episode_per_key() {
        let mut alerts = Hysteresis::new(AlertConfig {
            key: "machine".into(),
            score: "p".into(),
            raise_above: 0.8,
            clear_below: 0.3,
        });
        let batch = |machines: &[&str], scores: &[f32]| {
            RecordBatch::try_from_iter([
                (
                    "machine",
                    Arc::new(StringArray::from(machines.to_vec())) as _,
                ),
                ("p", Arc::new(Float32Array::from(scores.to_vec())) as _),
            ])
            .unwrap()
        };
        let first = alerts
            .raises(&batch(
                &["a", "a", "b", "a", "a"],
                &[0.9, 0.95, 0.5, 0.5, 0.85],
            ))
            .unwrap();
        // a raises, stays raised through 0.95 and 0.5 (not below 0.3) and 0.85.
        assert_eq!(
            first,
            BooleanArray::from(vec![true, false, false, false, false])
        );
        let second = alerts
            .raises(&batch(&["a", "a", "b"], &[0.2, 0.9, 0.81]))
            .unwrap();
        assert_eq!(second, BooleanArray::from(vec![false, true, true]));
    }
}

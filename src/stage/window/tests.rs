//! Unit tests of the window stage: assignment, closing, lateness, sliding windows, sample
//! chunks, and the offsets it retains.

use std::sync::Arc;

use arrow::array::{
    ArrayRef, AsArray, Float64Array, Int32Array, Int64Array, ListBuilder, RecordBatch, StringArray,
    TimestampMillisecondArray,
};
use arrow::datatypes::{Float64Type, Int64Type, Schema};

use super::*;
use crate::config::WindowConfig;
use crate::stage::PlanIssues;

fn config(yaml: &str) -> WindowConfig {
    serde_norway::from_str(yaml).unwrap()
}

/// Rows of (machine, ts ms, value) at offsets `first..` of partition 0.
fn rows(first: i64, readings: &[(&str, i64, f64)]) -> RecordBatch {
    let n = readings.len();
    let columns: Vec<(&str, ArrayRef)> = vec![
        (
            "machine_id",
            Arc::new(StringArray::from_iter_values(readings.iter().map(|r| r.0))),
        ),
        (
            "ts",
            Arc::new(
                TimestampMillisecondArray::from_iter_values(readings.iter().map(|r| r.1))
                    .with_timezone("UTC"),
            ),
        ),
        (
            "value",
            Arc::new(Float64Array::from_iter_values(readings.iter().map(|r| r.2))),
        ),
        ("_topic", Arc::new(StringArray::from(vec!["s"; n]))),
        ("_partition", Arc::new(Int32Array::from(vec![0; n]))),
        (
            "_offset",
            Arc::new(Int64Array::from_iter_values(first..first + n as i64)),
        ),
        (
            "_timestamp",
            Arc::new(TimestampMillisecondArray::from(vec![0; n]).with_timezone("UTC")),
        ),
    ];
    RecordBatch::try_from_iter(columns).unwrap()
}

fn stage(config: &WindowConfig, input: &Schema) -> WindowStage {
    let mut issues = PlanIssues::new("stages[0].window".into());
    let schema = output_schema(config, input, &mut issues);
    assert!(issues.issues.is_empty(), "{:?}", issues.issues);
    WindowStage::new("stages[0].window".into(), config, Arc::new(schema))
}

fn floats(batch: &RecordBatch, name: &str) -> Vec<f64> {
    batch
        .column_by_name(name)
        .unwrap()
        .as_primitive::<Float64Type>()
        .values()
        .to_vec()
}

fn strings(batch: &RecordBatch, name: &str) -> Vec<String> {
    let column = batch.column_by_name(name).unwrap();
    column
        .as_string::<i32>()
        .iter()
        .map(|s| s.unwrap_or("").to_owned())
        .collect()
}

const TUMBLING: &str = "
key: [machine_id]
time: ts
size: 10s
allowed_lateness: 2s
fields:
  - input: value
    features: [mean, max, count, slope]
";

#[tokio::test]
async fn tumbling_windows_close_per_key_and_accept_records_within_lateness() {
    let config = config(TUMBLING);
    let batch = rows(
        0,
        &[
            ("a", 1_000, 1.0),
            ("b", 2_000, 10.0),
            ("a", 9_000, 3.0),
            ("a", 11_000, 100.0), // window [10s, 20s) of a; a's watermark 11s
            ("a", 8_000, 2.0),    // out of order, within lateness: still in [0, 10s)
            ("a", 12_500, 5.0),   // watermark 12.5s >= 10s + 2s: [0, 10s) closes
            ("a", 7_000, 9.0),    // late: [0, 10s) is closed
        ],
    );
    let stage = stage(&config, &batch.schema());
    let out = stage.process(batch).await.unwrap();
    assert!(out.aggregated);
    assert_eq!(out.rejected.len(), 1);
    assert_eq!(out.rejected[0].row, 6);
    assert!(
        out.rejected[0].reason.starts_with("late"),
        "{:?}",
        out.rejected
    );
    let w = &out.rows;
    assert_eq!(
        w.num_rows(),
        1,
        "only a's first window closed; b's watermark is 2s"
    );
    assert_eq!(strings(w, "machine_id"), ["a"]);
    assert_eq!(strings(w, "window_id"), ["a@1970-01-01T00:00:00.000Z"]);
    assert_eq!(floats(w, "value_mean"), [2.0]);
    assert_eq!(floats(w, "value_max"), [3.0]);
    assert_eq!(floats(w, "value_count"), [3.0]);
    // values 1, 2, 3 at 1s, 8s, 9s: least-squares slope per second.
    let (t, v) = ([1.0, 8.0, 9.0], [1.0, 2.0, 3.0]);
    let (mt, mv) = (6.0, 2.0);
    let slope: f64 = t
        .iter()
        .zip(v)
        .map(|(t, v)| (t - mt) * (v - mv))
        .sum::<f64>()
        / t.iter().map(|t| (t - mt) * (t - mt)).sum::<f64>();
    assert!((floats(w, "value_slope")[0] - slope).abs() < 1e-12);
    // Emitted by the record that moved the watermark (offset 5), stamped with the end.
    let offsets = w
        .column_by_name("_offset")
        .unwrap()
        .as_primitive::<Int64Type>();
    assert_eq!(offsets.value(0), 5);
    let records = w
        .column_by_name("records")
        .unwrap()
        .as_primitive::<Int64Type>();
    assert_eq!(records.value(0), 3);
    // Open: b's [0, 10s) from offset 1, a's [10s, 20s) from offsets 3 and 5.
    let tp = TopicPartition::new("s", 0);
    assert_eq!(stage.retain_from(&tp), Some(1));
}

#[tokio::test]
async fn state_survives_batches_and_revoke_forgets_it() {
    let config = config(TUMBLING);
    let first = rows(0, &[("a", 1_000, 1.0), ("a", 2_000, 3.0)]);
    let stage = stage(&config, &first.schema());
    let tp = TopicPartition::new("s", 0);
    assert_eq!(stage.process(first).await.unwrap().rows.num_rows(), 0);
    assert_eq!(stage.retain_from(&tp), Some(0));
    let out = stage.process(rows(2, &[("a", 15_000, 7.0)])).await.unwrap();
    assert_eq!(floats(&out.rows, "value_mean"), [2.0]);
    assert_eq!(
        stage.retain_from(&tp),
        Some(2),
        "only the new window's record is held"
    );
    stage.revoke(Some(std::slice::from_ref(&tp)));
    assert_eq!(stage.retain_from(&tp), None);
}

#[tokio::test]
async fn sliding_windows_count_a_record_in_each_window_containing_it() {
    let config = config(
        "
key: [machine_id]
time: ts
size: 10s
slide: 5s
fields:
  - input: value
    features: [count, mean]
",
    );
    let batch = rows(
        0,
        &[("a", 6_000, 1.0), ("a", 12_000, 3.0), ("a", 40_000, 0.0)],
    );
    let stage = stage(&config, &batch.schema());
    let out = stage.process(batch).await.unwrap();
    let starts = out
        .rows
        .column_by_name("window_start")
        .unwrap()
        .as_primitive::<arrow::datatypes::TimestampMillisecondType>()
        .values()
        .to_vec();
    assert_eq!(starts, [0, 5_000, 10_000]);
    assert_eq!(floats(&out.rows, "value_count"), [1.0, 2.0, 1.0]);
    assert_eq!(floats(&out.rows, "value_mean"), [1.0, 2.0, 3.0]);
}

#[tokio::test]
async fn sample_chunks_are_concatenated_in_time_order_with_band_power() {
    let config = config(
        "
key: [machine_id]
time: ts
size: 1s
carry: [condition]
only_with: [vibration]
fields:
  - input: vibration
    sample_rate: rate
    features: [rms, count]
    bands:
      - {name: tone, low_hz: 90, high_hz: 110}
      - {name: other, low_hz: 110, high_hz: 500}
",
    );
    // Four chunks of 250 samples at 1 kHz: a 100 Hz sine of amplitude 1, sent out of order,
    // plus a record of another feed (no vibration) and one in the next window.
    let sine = |i: usize| (2.0 * std::f64::consts::PI * 100.0 * i as f64 / 1000.0).sin();
    let mut list = ListBuilder::new(arrow::array::Float64Builder::new());
    let order = [1usize, 0, 3, 2];
    for &chunk in &order {
        list.values().append_slice(
            &(chunk * 250..(chunk + 1) * 250)
                .map(sine)
                .collect::<Vec<_>>(),
        );
        list.append(true);
    }
    list.append(false);
    list.values().append_slice(&[0.0; 10]);
    list.append(true);
    let mut ts: Vec<i64> = order.iter().map(|&c| c as i64 * 250).collect();
    ts.extend([500, 1_000]);
    let n = ts.len();
    let batch = RecordBatch::try_from_iter(vec![
        (
            "machine_id",
            Arc::new(StringArray::from(vec!["m"; n])) as ArrayRef,
        ),
        (
            "ts",
            Arc::new(TimestampMillisecondArray::from(ts).with_timezone("UTC")),
        ),
        ("vibration", Arc::new(list.finish())),
        ("rate", Arc::new(Float64Array::from(vec![1000.0; n]))),
        (
            "condition",
            Arc::new(StringArray::from(vec![
                "ok", "ok", "worn", "ok", "other", "next",
            ])),
        ),
        ("_topic", Arc::new(StringArray::from(vec!["s"; n]))),
        ("_partition", Arc::new(Int32Array::from(vec![0; n]))),
        (
            "_offset",
            Arc::new(Int64Array::from_iter_values(0..n as i64)),
        ),
        (
            "_timestamp",
            Arc::new(TimestampMillisecondArray::from(vec![0; n]).with_timezone("UTC")),
        ),
    ])
    .unwrap();
    let stage = stage(&config, &batch.schema());
    let out = stage.process(batch).await.unwrap();
    assert!(out.rejected.is_empty());
    let w = &out.rows;
    assert_eq!(w.num_rows(), 1);
    assert_eq!(floats(w, "vibration_count"), [1000.0]);
    let rms = floats(w, "vibration_rms")[0];
    assert!((rms - 0.5f64.sqrt()).abs() < 1e-9, "{rms}");
    // A continuous sine (chunks reordered by time) has all its power in the tone band.
    let tone = floats(w, "vibration_band_tone")[0];
    let other = floats(w, "vibration_band_other")[0];
    assert!((tone - 0.5).abs() < 1e-9 && other < 1e-12, "{tone} {other}");
    // Carried from the window's latest record by event time (chunk 3, sent third).
    assert_eq!(strings(w, "condition"), ["worn"]);
}

#[test]
fn plan_reports_wrong_columns_with_key_paths() {
    let batch = rows(0, &[("a", 0, 1.0)]);
    let config = config(
        "
key: [value]
time: machine_id
size: 10s
slide: 20s
fields:
  - input: missing
    features: [mean]
  - input: value
    features: [mean]
    bands: [{name: b, low_hz: 1, high_hz: 2}]
",
    );
    let mut issues = PlanIssues::new("stages[0].window".into());
    output_schema(&config, &batch.schema(), &mut issues);
    let paths: Vec<&str> = issues.issues.iter().map(|i| i.path.as_str()).collect();
    assert_eq!(
        paths,
        [
            "stages[0].window.key[0]",
            "stages[0].window.time",
            "stages[0].window.slide",
            "stages[0].window.fields[0].input",
            "stages[0].window.fields[1].bands",
        ]
    );
}

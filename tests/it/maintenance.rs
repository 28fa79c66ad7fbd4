//! Predictive maintenance end to end on the in-process mock cluster:
//!
//! - the window stage's features equal a polars computation of the same windows over the
//!   same records, with events arriving out of order within the allowed lateness, and
//!   events later than that sent to the dead letters;
//! - `pipelines/maintenance.yaml` with the bootstrapped `bearing-health` model raises
//!   alerts for the faulty held-out MFPT rigs and not for the healthy one;
//! - `pipelines/maintenance-process.yaml` predicts failures of unseen generated machines.

use crate::common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use arrow::array::{Array, AsArray, RecordBatch};
use arrow::datatypes::{Float64Type, Int64Type, TimestampMillisecondType};
use polars::prelude::*;
use rdkafka::mocking::MockCluster;

use sluice::demo::feeds::ai4i::ProcessGenerator;
use sluice::demo::feeds::feedback::{produce, SampleRecord};
use sluice::demo::{self, DemoOptions};

const SIZE_MS: i64 = 10 * 60_000;
const SLIDE_MS: i64 = 5 * 60_000;
const LATENESS_MS: i64 = 2 * 60_000;
const TORQUE_FEATURES: [&str; 11] = [
    "mean", "std", "rms", "min", "max", "peak", "crest", "kurtosis", "skew", "slope", "count",
];

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

fn window_pipeline(brokers: &str, out: &Path) -> sluice::pipeline::Pipeline {
    let text = format!(
        "name: windows-test
source:
  kafka:
    brokers: {brokers}
    topics: [sensor-readings]
    group_id: windows-test
    batch: {{max_rows: 50, max_wait: 50ms}}
    properties: {{session.timeout.ms: 6000}}
decode:
  schema: {schema}
stages:
  - window:
      key: [machine_id]
      time: ts
      size: 10m
      slide: 5m
      allowed_lateness: 2m
      only_with: [torque]
      fields:
        - {{input: torque, features: [{features}]}}
        - {{input: rotational_speed, features: [mean]}}
sinks:
  - parquet:
      path: {out}/windows
      roll: {{max_age: 1s}}
dead_letter:
  parquet:
    path: {out}/dead_letters
    roll: {{max_age: 1s}}
",
        schema = repo("schemas/sensor_readings.json").display(),
        features = TORQUE_FEATURES.join(", "),
        out = out.display(),
    );
    let file = out.join("windows-test.yaml");
    std::fs::write(&file, text).unwrap();
    sluice::pipeline::load(&file).unwrap_or_else(|e| panic!("{e}"))
}

/// Generated readings of six machines, each machine's pairs of neighbouring readings
/// swapped (one minute out of order: within the two minutes of lateness), then two
/// re-sent early readings (late by far more than the lateness).
fn readings() -> (Vec<SampleRecord>, Vec<SampleRecord>) {
    let start = 1_767_225_600_000; // 2026-01-01T00:00:00Z
    let generated: Vec<SampleRecord> = ProcessGenerator::new(11, 6, start, 60_000)
        .take(6 * 90)
        .map(|r| r.to_record())
        .collect();
    let mut by_machine: HashMap<String, Vec<SampleRecord>> = HashMap::new();
    for record in &generated {
        by_machine
            .entry(record.key.clone())
            .or_default()
            .push(record.clone());
    }
    let mut in_time = Vec::new();
    for chunk in generated.chunks(12) {
        // 12 consecutive readings = two minutes of six machines: swap the minutes.
        let (first, second) = chunk.split_at(chunk.len() / 2);
        in_time.extend_from_slice(second);
        in_time.extend_from_slice(first);
    }
    let late = vec![generated[0].clone(), generated[7].clone()];
    (in_time, late)
}

fn value(record: &SampleRecord) -> serde_json::Value {
    serde_json::from_slice(&record.payload).unwrap()
}

/// The expected windows, computed by polars from the records that were in time.
fn polars_reference(records: &[SampleRecord]) -> DataFrame {
    let (mut machines, mut starts, mut times, mut torque, mut speed) =
        (vec![], vec![], vec![], vec![], vec![]);
    for record in records {
        let v = value(record);
        let ts = chrono::DateTime::parse_from_rfc3339(v["ts"].as_str().unwrap())
            .unwrap()
            .timestamp_millis();
        // Every sliding window [start, start + size) holding ts.
        let mut window = ts.div_euclid(SLIDE_MS) * SLIDE_MS;
        while window > ts - SIZE_MS {
            machines.push(v["machine_id"].as_str().unwrap().to_owned());
            starts.push(window);
            times.push(ts);
            torque.push(v["torque"].as_f64().unwrap());
            speed.push(v["rotational_speed"].as_f64().unwrap());
            window -= SLIDE_MS;
        }
    }
    let frame = df!(
        "machine_id" => machines,
        "window_start" => starts,
        "ts" => times,
        "torque" => torque,
        "rotational_speed" => speed,
    )
    .unwrap();
    let x = || col("torque");
    let t = || (col("ts") - col("window_start")).cast(DataType::Float64) / lit(1000.0);
    let rms = (x() * x()).mean().sqrt();
    let peak = x().abs().max();
    let slope = ((t() - t().mean()) * (x() - x().mean())).sum()
        / ((t() - t().mean()) * (t() - t().mean())).sum();
    frame
        .lazy()
        // A window closes once its machine's newest event is past its end plus lateness.
        .with_column(
            col("ts")
                .max()
                .over([col("machine_id")])
                .expect("a window expression")
                .alias("watermark"),
        )
        .filter((col("window_start") + lit(SIZE_MS + LATENESS_MS)).lt_eq(col("watermark")))
        .group_by([col("machine_id"), col("window_start")])
        .agg([
            x().mean().alias("torque_mean"),
            x().std(0).alias("torque_std"),
            rms.clone().alias("torque_rms"),
            x().min().alias("torque_min"),
            x().max().alias("torque_max"),
            peak.clone().alias("torque_peak"),
            (peak / rms).alias("torque_crest"),
            x().kurtosis(false, true).alias("torque_kurtosis"),
            x().skew(true).alias("torque_skew"),
            slope.alias("torque_slope"),
            x().count().cast(DataType::Float64).alias("torque_count"),
            col("rotational_speed")
                .mean()
                .alias("rotational_speed_mean"),
        ])
        .sort(["machine_id", "window_start"], Default::default())
        .collect()
        .unwrap()
}

/// (machine, window start) -> feature columns, from the pipeline's Parquet output.
fn written_windows(batches: &[RecordBatch]) -> Vec<((String, i64), HashMap<String, f64>)> {
    let mut rows = Vec::new();
    for batch in batches {
        let machines = batch
            .column_by_name("machine_id")
            .unwrap()
            .as_string::<i32>();
        let starts = batch
            .column_by_name("window_start")
            .unwrap()
            .as_primitive::<TimestampMillisecondType>();
        for row in 0..batch.num_rows() {
            let features = batch
                .schema()
                .fields()
                .iter()
                .enumerate()
                .filter(|(_, f)| f.name().starts_with("torque_") || f.name().ends_with("_mean"))
                .map(|(i, f)| {
                    let column = batch.column(i).as_primitive::<Float64Type>();
                    (f.name().clone(), column.value(row))
                })
                .collect();
            rows.push((
                (machines.value(row).to_owned(), starts.value(row)),
                features,
            ));
        }
    }
    rows.sort_by(|a, b| a.0.cmp(&b.0));
    rows
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn window_features_equal_a_polars_reference_with_out_of_order_and_late_events() {
    let cluster = MockCluster::new(1).unwrap();
    cluster.create_topic("sensor-readings", 2, 1).unwrap();
    let brokers = cluster.bootstrap_servers();
    let out = tempfile::tempdir().unwrap();
    let (in_time, late) = readings();
    let all: Vec<SampleRecord> = in_time.iter().chain(&late).cloned().collect();
    let produced = produce(&brokers, "sensor-readings", all).await.unwrap();

    let pipeline = window_pipeline(&brokers, out.path());
    let stats = common::consume_all(pipeline, produced).await;
    assert_eq!(stats.records_in, produced);

    let reference = polars_reference(&in_time);
    let written = written_windows(&common::read_dataset(&out.path().join("windows")));
    let machines = reference.column("machine_id").unwrap().str().unwrap();
    let starts = reference.column("window_start").unwrap().i64().unwrap();
    let expected_keys: Vec<(String, i64)> = (0..reference.height())
        .map(|i| (machines.get(i).unwrap().to_owned(), starts.get(i).unwrap()))
        .collect();
    let written_keys: Vec<(String, i64)> = written.iter().map(|(k, _)| k.clone()).collect();
    assert_eq!(written_keys, expected_keys, "the same windows closed");
    assert!(written.len() > 6 * 10, "{} windows", written.len());

    let mut compared = 0;
    for name in reference.get_column_names() {
        let name = name.as_str();
        if name == "machine_id" || name == "window_start" {
            continue;
        }
        let expected = reference.column(name).unwrap().f64().unwrap();
        for (i, (key, features)) in written.iter().enumerate() {
            let want = expected.get(i).unwrap();
            let got = features[name];
            assert!(
                (got - want).abs() <= 1e-9 * want.abs().max(1.0),
                "{name} of {key:?}: sluice {got}, polars {want}"
            );
            compared += 1;
        }
    }
    assert_eq!(compared, written.len() * 12);

    // The two re-sent early readings were beyond the lateness: dead letters, not rows.
    let letters = common::read_dataset(&out.path().join("dead_letters"));
    let reasons: Vec<String> = letters
        .iter()
        .flat_map(|b| {
            let reasons = b.column_by_name("reason").unwrap().as_string::<i32>();
            (0..b.num_rows())
                .map(|i| reasons.value(i).to_owned())
                .collect::<Vec<_>>()
        })
        .collect();
    assert_eq!(reasons.len(), 2, "{reasons:?}");
    assert!(reasons.iter().all(|r| r.starts_with("late")), "{reasons:?}");
    let offsets: usize = letters
        .iter()
        .map(|b| {
            let offsets = b
                .column_by_name("_offset")
                .unwrap()
                .as_primitive::<Int64Type>();
            offsets.len() - offsets.null_count()
        })
        .sum();
    assert_eq!(offsets, 2, "dead letters carry their offsets");
}

fn demo_options(pipeline: &str, out: &Path, records: Option<u64>) -> DemoOptions {
    DemoOptions {
        pipeline: repo(&format!("pipelines/{pipeline}.yaml")),
        out: Some(out.to_owned()),
        records,
        malformed_rate: 0.0,
        reviews: repo("data/reviews.jsonl"),
        split: "holdout".into(),
        signals: repo("data/signals"),
        drift_plot: None,
        partitions: sluice::demo::DEMO_PARTITIONS,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn held_out_faulty_bearings_raise_alerts_and_the_healthy_one_does_not() {
    let out = tempfile::tempdir().unwrap();
    let summary = demo::run(&demo_options("maintenance", out.path(), None))
        .await
        .unwrap();
    let alerts = summary.alerts.clone().unwrap_or_default();
    let mut alerted: Vec<&str> = alerts.keys().map(String::as_str).collect();
    alerted.sort();
    assert_eq!(
        alerted,
        [
            "rig-InnerRaceFault_vload_6",
            "rig-InnerRaceFault_vload_7",
            "rig-OuterRaceFault_3",
            "rig-OuterRaceFault_vload_6",
            "rig-OuterRaceFault_vload_7",
        ],
        "{summary}"
    );
    assert!(!alerts.contains_key("rig-baseline_3"), "{summary}");
    // Hysteresis: a rig that stays faulty is reported once, not once per window.
    assert!(alerts.values().all(|&n| n <= 2), "{summary}");
    let labels = summary.labels.clone().unwrap();
    assert!(labels.compared > 80, "{summary}");
    assert!(labels.metrics().macro_f1 > 0.8, "{summary}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn process_failures_of_unseen_machines_are_predicted() {
    let out = tempfile::tempdir().unwrap();
    let summary = demo::run(&demo_options(
        "maintenance-process",
        out.path(),
        Some(20_000),
    ))
    .await
    .unwrap();
    assert_eq!(summary.stats.records_in, 20_000);
    let labels = summary.labels.clone().unwrap();
    // 100 machines × 200 minutes: about 20 ten-minute windows each (the last still open).
    assert!(
        (100 * 18..=100 * 20).contains(&labels.compared),
        "{summary}"
    );
    let metrics = labels.metrics();
    assert!(metrics.macro_f1 > 0.75, "{summary}");
    let alerts: u64 = summary.alerts.clone().unwrap_or_default().values().sum();
    assert!(alerts > 0 && alerts < labels.compared, "{summary}");
}

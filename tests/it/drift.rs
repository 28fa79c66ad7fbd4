//! Models in production. Drift at serving time: a model trained by `sluice retrain`
//! carries a reference profile; the pipeline serving it measures each window of rows
//! against it. A stream like the training data keeps the drift gauges low; a stream whose
//! feature has moved raises the gauge of that feature, sends drift events and starts the
//! retrain job. Canary: a share of the rows, by key, is served by another version.

use std::path::Path;
use std::time::Duration;

use rdkafka::mocking::MockCluster;

use crate::common::{eventually, spawn_pipeline, tabular_parquet, Running};
use sluice::demo::feeds::feedback::{produce, SampleRecord};

pub(crate) const STAGE: &str = "stages[0].infer";

/// `count` records like the training rows (ids from `start`), `f1` moved by `shift`.
pub(crate) fn points(start: usize, count: usize, shift: f64) -> Vec<SampleRecord> {
    let noise = |i: usize| ((i * 7919) % 100) as f64 / 100.0;
    (start..start + count)
        .map(|i| {
            let f1 = (i % 3) as f64 * 4.0 + noise(i) + shift;
            let f2 = -((i % 3) as f64) * 2.0 + noise(i + 1);
            SampleRecord {
                key: format!("p{i}"),
                payload: serde_json::json!({"id": format!("p{i}"), "f1": f1, "f2": f2})
                    .to_string()
                    .into_bytes(),
                timestamp_ms: 1_795_305_600_000 + i as i64,
                well_formed: true,
            }
        })
        .collect()
}

/// Trains the tabular model into `root/models` with `sluice retrain` (version 1); returns
/// the job file.
pub(crate) async fn train(root: &Path) -> std::path::PathBuf {
    let data = root.join("train/date=2026-11-01");
    std::fs::create_dir_all(&data).unwrap();
    std::fs::write(data.join("part.parquet"), tabular_parquet(0..900)).unwrap();
    let job = root.join("retrain.yaml");
    std::fs::write(
        &job,
        format!(
            "name: drift-job\ndataset:\n  path: {d}/train\n  features: [f1, f2]\n  label:\n    column: label\n  holdout: 0.3\nmodels: {d}/models\nmodel:\n  name: tabular\n  input: features\n  labels: [a, b, c]\ntrainer:\n  epochs: 40\n",
            d = root.display()
        ),
    )
    .unwrap();
    let loaded = sluice::pipeline::job::load(&job, &|_| None).unwrap_or_else(|e| panic!("{e}"));
    let report = tokio::task::spawn_blocking(move || {
        sluice::retrain::run(&loaded, &Default::default(), |_, _, _| {})
    })
    .await
    .unwrap()
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(report.published.as_deref(), Some("tabular/1"), "{report}");
    job
}

/// Version 2: the same model published beside version 1, which stays the serving one.
async fn publish_second_version(root: &Path) {
    let models = root.join("models");
    tokio::task::spawn_blocking(move || {
        let registry = sluice::model::Registry::new(models);
        let v1 = registry.current("tabular").unwrap();
        let manifest = registry.manifest(&v1).unwrap();
        registry
            .publish(&v1.model_path(), manifest, &[], false)
            .unwrap();
    })
    .await
    .unwrap();
}

/// A pipeline of `points` JSON -> infer (with `infer_extra`, indented six spaces) ->
/// Parquet under `root/out/rows`, plus `extra` top-level YAML.
pub(crate) fn points_pipeline(
    root: &Path,
    brokers: &str,
    infer_extra: &str,
    extra: &str,
) -> std::path::PathBuf {
    let schema = root.join("points.json");
    std::fs::write(
        &schema,
        r#"{"name": "points", "fields": [{"name": "id", "type": "utf8"}, {"name": "f1", "type": "float64"}, {"name": "f2", "type": "float64"}]}"#,
    )
    .unwrap();
    let file = root.join("points.yaml");
    std::fs::write(
        &file,
        format!(
            "name: points\nsource:\n  kafka:\n    brokers: {brokers}\n    topics: [points]\n    batch:\n      max_rows: 100\n      max_wait: 100ms\ndecode:\n  schema: {schema}\nmodels: {d}/models\nstages:\n  - infer:\n      model: tabular\n      inputs:\n        features: [f1, f2]\n      outputs:\n        probabilities: probabilities\n      device: cpu\n{infer_extra}{extra}sinks:\n  - parquet:\n      path: {d}/out/rows\n      roll:\n        max_age: 1s\ndead_letter:\n  parquet:\n    path: {d}/out/dead\n",
            schema = schema.display(),
            d = root.display()
        ),
    )
    .unwrap();
    file
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_canary_version_serves_its_share_of_keys_and_each_row_names_its_version() {
    use arrow::array::{Array, AsArray};
    let work = tempfile::tempdir().unwrap();
    let root = work.path();
    train(root).await;
    publish_second_version(root).await;
    let cluster = MockCluster::new(1).unwrap();
    cluster.create_topic("points", 2, 1).unwrap();
    let brokers = cluster.bootstrap_servers();
    let file = points_pipeline(
        root,
        &brokers,
        "      canary: {version: \"2\", share: 0.3, key: id}\n",
        "",
    );
    let Running {
        stats,
        shutdown,
        handle,
        stop_on_panic: _stop_on_panic,
    } = spawn_pipeline(sluice::pipeline::load(&file).unwrap_or_else(|e| panic!("{e}")));
    produce(&brokers, "points", points(40_000, 1_000, 0.0))
        .await
        .unwrap();
    assert!(
        eventually(Duration::from_secs(60), || stats.snapshot().parquet_rows
            == 1_000)
        .await
    );
    shutdown.cancel();
    let summary = handle.await.unwrap().unwrap();
    assert_eq!(summary.dead_letters, 0);

    let fnv = |text: &str| {
        text.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
        })
    };
    let mut canary = 0;
    for batch in crate::common::read_dataset(&root.join("out/rows")) {
        let ids = batch
            .column_by_name("id")
            .unwrap()
            .as_string::<i32>()
            .clone();
        let versions = batch
            .column_by_name("model_version")
            .unwrap()
            .as_string::<i32>()
            .clone();
        let probabilities = batch
            .column_by_name("probabilities")
            .unwrap()
            .as_fixed_size_list()
            .clone();
        for row in 0..batch.num_rows() {
            let takes = fnv(ids.value(row)) % 10_000 < 3_000;
            let expected = if takes { "tabular/2" } else { "tabular/1" };
            assert_eq!(versions.value(row), expected, "row {}", ids.value(row));
            assert!(!probabilities.is_null(row));
            canary += usize::from(takes);
        }
    }
    assert!(
        (200..=400).contains(&canary),
        "{canary} of 1,000 rows on the canary (share 0.3)"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shadow_version_runs_beside_the_served_one_without_changing_it() {
    use arrow::array::{Array, AsArray};
    let work = tempfile::tempdir().unwrap();
    let root = work.path();
    train(root).await;
    publish_second_version(root).await;
    let cluster = MockCluster::new(1).unwrap();
    cluster.create_topic("points", 1, 1).unwrap();
    let brokers = cluster.bootstrap_servers();
    let file = points_pipeline(
        root,
        &brokers,
        "      shadow: {version: \"2\", sample: 0.5, key: id}\n",
        "",
    );
    let Running {
        stats,
        shutdown,
        handle,
        stop_on_panic: _stop_on_panic,
    } = spawn_pipeline(sluice::pipeline::load(&file).unwrap_or_else(|e| panic!("{e}")));
    produce(&brokers, "points", points(50_000, 400, 0.0))
        .await
        .unwrap();
    assert!(
        eventually(Duration::from_secs(60), || stats.snapshot().parquet_rows
            == 400)
        .await
    );
    shutdown.cancel();
    handle.await.unwrap().unwrap();

    let mut sampled = 0;
    for batch in crate::common::read_dataset(&root.join("out/rows")) {
        let column = |name: &str| batch.column_by_name(name).unwrap().clone();
        let served = column("model_version");
        let shadow = column("shadow_model_version");
        let (served, shadow) = (served.as_string::<i32>(), shadow.as_string::<i32>());
        let probabilities = column("probabilities");
        let shadow_probabilities = column("shadow_probabilities");
        let (p, sp) = (
            probabilities.as_fixed_size_list(),
            shadow_probabilities.as_fixed_size_list(),
        );
        for row in 0..batch.num_rows() {
            assert_eq!(served.value(row), "tabular/1", "the shadow serves nothing");
            if shadow.is_null(row) {
                assert!(sp.is_null(row));
                continue;
            }
            sampled += 1;
            assert_eq!(shadow.value(row), "tabular/2");
            // The same model: the same probabilities.
            assert_eq!(
                p.value(row)
                    .as_primitive::<arrow::datatypes::Float32Type>()
                    .values(),
                sp.value(row)
                    .as_primitive::<arrow::datatypes::Float32Type>()
                    .values()
            );
        }
    }
    assert!(
        (120..=280).contains(&sampled),
        "{sampled} of 400 rows in a 0.5 sample"
    );
    let (agreed, compared) = stats.shadow_agreement(STAGE, "tabular", "2");
    assert_eq!((agreed, compared), (sampled as u64, sampled as u64));

    // Mistakes in the lane settings are named at their keys.
    let file = points_pipeline(
        root,
        &brokers,
        "      shadow: {version: \"9\", sample: 0, key: nope}\n      canary: {version: \"2\", share: 1, key: id}\n",
        "",
    );
    let error = sluice::pipeline::load(&file)
        .map(|_| ())
        .unwrap_err()
        .to_string();
    for key in [
        "shadow.sample",
        "shadow.key",
        "shadow.version",
        "canary.share",
    ] {
        assert!(
            error.contains(&format!("stages[0].infer.{key}")),
            "{key}: {error}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shifted_feature_raises_its_drift_gauge_and_a_like_stream_does_not() {
    let work = tempfile::tempdir().unwrap();
    let root = work.path();
    // A model of three classes from two features, trained and published by retrain.
    let job = train(root).await;
    let cluster = MockCluster::new(1).unwrap();
    cluster.create_topic("points", 1, 1).unwrap();
    cluster.create_topic("model-drift", 1, 1).unwrap();
    let brokers = cluster.bootstrap_servers();
    let file = points_pipeline(
        root,
        &brokers,
        "      drift:\n        window: 300\n        topic: model-drift\n",
        &format!(
            "retrain:\n  job: {}\n  every: 24h\n  on_drift: true\n  min_interval: 1s\n",
            job.display()
        ),
    );
    let Running {
        stats,
        shutdown,
        handle,
        stop_on_panic: _stop_on_panic,
    } = spawn_pipeline(sluice::pipeline::load(&file).unwrap_or_else(|e| panic!("{e}")));

    // Like the training data: every signal stays low.
    produce(&brokers, "points", points(10_000, 300, 0.0))
        .await
        .unwrap();
    assert!(
        eventually(Duration::from_secs(60), || stats
            .drift(STAGE, "feature:f1")
            .is_some())
        .await,
        "a window was measured"
    );
    for signal in ["feature:f1", "feature:f2", "predicted", "top_score"] {
        let psi = stats.drift(STAGE, signal).unwrap();
        assert!(
            psi < 0.1,
            "{signal}: PSI {psi} on a stream like the training data"
        );
    }

    // f1 moves by 6 (more than the classes' spread): its gauge rises past 0.25.
    produce(&brokers, "points", points(20_000, 300, 6.0))
        .await
        .unwrap();
    assert!(
        eventually(Duration::from_secs(60), || {
            stats
                .drift(STAGE, "feature:f1")
                .is_some_and(|psi| psi > 0.25)
        })
        .await,
        "feature:f1 at {:?}",
        stats.drift(STAGE, "feature:f1")
    );
    let f2 = stats.drift(STAGE, "feature:f2").unwrap();
    assert!(f2 < 0.1, "the unmoved feature stays low: {f2}");
    assert_eq!(stats.drift_events(STAGE, "feature:f1", "raised"), 1);
    assert_eq!(stats.drift_events(STAGE, "feature:f2", "raised"), 0);
    // The raise started the pipeline's retrain job (`on_drift`).
    assert!(
        eventually(Duration::from_secs(60), || stats.retrain_runs("drift") == 1).await,
        "a drift retrain ran"
    );

    // Back to the training distribution: the raised signal clears (and no second run).
    produce(&brokers, "points", points(30_000, 300, 0.0))
        .await
        .unwrap();
    assert!(
        eventually(Duration::from_secs(60), || {
            stats.drift_events(STAGE, "feature:f1", "cleared") == 1
        })
        .await,
        "feature:f1 cleared at {:?}",
        stats.drift(STAGE, "feature:f1")
    );
    assert_eq!(stats.retrain_runs("drift"), 1);
    shutdown.cancel();
    handle.await.unwrap().unwrap();
    assert!(Path::new(&root.join("out/rows")).is_dir());

    // The window history (what `sluice demo --drift-plot` draws) saw the three phases:
    // f1 low, then over 0.25, then low again.
    let f1: Vec<f64> = stats
        .drift_history()
        .iter()
        .filter(|w| w.stage == STAGE)
        .filter_map(|w| {
            w.signals
                .iter()
                .find(|(s, _)| s == "feature:f1")
                .map(|(_, psi)| *psi)
        })
        .collect();
    let first_high = f1
        .iter()
        .position(|&psi| psi > 0.25)
        .expect("a window over 0.25");
    assert!(f1[..first_high].iter().all(|&psi| psi < 0.1), "{f1:?}");
    assert!(f1.last().is_some_and(|&psi| psi < 0.1), "{f1:?}");

    // The drift topic holds the events as rows: each raised signal raised once after the
    // shift, then cleared (the moved feature drags the predictions along; f2 never moved).
    let raised: u64 = ["feature:f1", "predicted", "top_score"]
        .iter()
        .map(|s| stats.drift_events(STAGE, s, "raised"))
        .sum();
    let events = crate::common::read_topic(
        &brokers,
        "model-drift",
        2 * raised as usize,
        Duration::from_secs(10),
    );
    let rows: Vec<serde_json::Value> = events
        .iter()
        .map(|m| serde_json::from_slice(&m.payload).unwrap())
        .collect();
    assert_eq!(rows.len() as u64, 2 * raised, "{rows:?}");
    let of = |signal: &str| -> Vec<&str> {
        rows.iter()
            .filter(|r| r["signal"] == signal)
            .map(|r| r["state"].as_str().unwrap())
            .collect()
    };
    assert_eq!(of("feature:f1"), ["raised", "cleared"]);
    assert!(of("feature:f2").is_empty());
    let first = rows.iter().find(|r| r["signal"] == "feature:f1").unwrap();
    assert!(first["psi"].as_f64().unwrap() > 0.25);
    assert_eq!(first["version"], "1");
    assert_eq!(first["window_rows"], 300);
}

//! Models in production, continued: live accuracy from delayed labels. The pipeline's
//! predictions wait for labels that arrive later on their own topic (a star rating keyed
//! by the row's id); each window of labelled rows is scored per model version. The scores
//! must be exactly what the same join gives when computed offline from the Parquet output
//! and the labels the test sent.

use std::collections::HashMap;
use std::time::Duration;

use arrow::array::AsArray;
use rdkafka::mocking::MockCluster;

use crate::common::{eventually, read_dataset, read_topic, spawn_pipeline, Running};
use crate::drift::{points, points_pipeline, train, STAGE};
use sluice::demo::feeds::feedback::{produce, SampleRecord};

const WINDOW: usize = 100;

fn label(key: &str, payload: String) -> SampleRecord {
    SampleRecord {
        key: key.to_owned(),
        payload: payload.into_bytes(),
        timestamp_ms: chrono::Utc::now().timestamp_millis(),
        well_formed: true,
    }
}

/// Scores of one window computed here, independently of sluice: accuracy, macro-F1 over
/// the classes that occur (scikit-learn's rule), expected calibration error in ten bins.
fn offline_scores(pairs: &[(usize, Vec<f32>)]) -> (f64, f64, f64) {
    let argmax = |p: &[f32]| (0..p.len()).fold(0, |best, i| if p[i] > p[best] { i } else { best });
    let n = pairs.len() as f64;
    let predicted: Vec<usize> = pairs.iter().map(|(_, p)| argmax(p)).collect();
    let correct = |i: usize| pairs[i].0 == predicted[i];
    let accuracy = (0..pairs.len()).filter(|&i| correct(i)).count() as f64 / n;
    let mut f1s = Vec::new();
    for class in 0..3 {
        let tp = (0..pairs.len())
            .filter(|&i| pairs[i].0 == class && predicted[i] == class)
            .count() as f64;
        let truth = pairs.iter().filter(|(t, _)| *t == class).count() as f64;
        let said = predicted.iter().filter(|&&p| p == class).count() as f64;
        if truth + said == 0.0 {
            continue;
        }
        let precision = if said > 0.0 { tp / said } else { 0.0 };
        let recall = if truth > 0.0 { tp / truth } else { 0.0 };
        f1s.push(if precision + recall > 0.0 {
            2.0 * precision * recall / (precision + recall)
        } else {
            0.0
        });
    }
    let macro_f1 = f1s.iter().sum::<f64>() / f1s.len() as f64;
    let mut gap = [0.0_f64; 10];
    for (i, (_, p)) in pairs.iter().enumerate() {
        let confidence = f64::from(p[predicted[i]]);
        let bin = ((confidence * 10.0) as usize).min(9);
        gap[bin] += f64::from(u8::from(correct(i))) - confidence;
    }
    let calibration_error = gap.iter().map(|g| g.abs()).sum::<f64>() / n;
    (accuracy, macro_f1, calibration_error)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_accuracy_from_delayed_labels_matches_the_join_computed_offline() {
    let work = tempfile::tempdir().unwrap();
    let root = work.path();
    train(root).await;
    let cluster = MockCluster::new(1).unwrap();
    for topic in ["points", "labels", "model-accuracy"] {
        cluster.create_topic(topic, 1, 1).unwrap();
    }
    let brokers = cluster.bootstrap_servers();
    let accuracy = "      accuracy:\n        id: id\n        labels: {topic: labels, label: stars, values: {\"1\": a, \"2\": b, \"3\": c}}\n        horizon: 10s\n        window: 100\n        topic: model-accuracy\n";
    let file = points_pipeline(root, &brokers, accuracy, "");
    let Running {
        stats,
        shutdown,
        handle,
        stop_on_panic: _stop_on_panic,
    } = spawn_pipeline(sluice::pipeline::load(&file).unwrap_or_else(|e| panic!("{e}")));
    produce(&brokers, "points", points(60_000, 600, 0.0))
        .await
        .unwrap();
    assert!(
        eventually(Duration::from_secs(60), || stats.snapshot().parquet_rows
            == 600)
        .await
    );

    // Labels come later, in another order than the rows, for 500 of the 600 rows; every
    // fifth one disagrees with the class the features were drawn from, so accuracy is
    // not 1. Then labels that cannot count: ids no row had, a rating the mapping lacks,
    // messages that are not JSON objects.
    let mut sent = Vec::new();
    let mut labels = Vec::new();
    for k in 0..500 {
        let i = 60_000 + (k * 37) % 500;
        let class = if k % 5 == 0 { (i + 1) % 3 } else { i % 3 };
        sent.push((format!("p{i}"), class));
        let payload = serde_json::json!({"id": format!("p{i}"), "stars": class + 1, "by": "agent"});
        labels.push(label(&format!("p{i}"), payload.to_string()));
    }
    for k in 0..5 {
        labels.push(label(
            "x",
            serde_json::json!({"id": format!("nobody{k}"), "stars": 1}).to_string(),
        ));
    }
    for k in 0..3 {
        labels.push(label(
            "x",
            serde_json::json!({"id": format!("p{}", 60_000 + k), "stars": 9}).to_string(),
        ));
    }
    labels.push(label("x", "not json".to_owned()));
    labels.push(label("x", "[1, 2]".to_owned()));
    produce(&brokers, "labels", labels).await.unwrap();

    let counted = |outcome: &str| stats.label_join(STAGE, outcome);
    assert!(
        eventually(Duration::from_secs(60), || counted("joined") == 500
            && counted("label_unknown") == 3
            && counted("label_bad") == 2)
        .await,
        "joined {}, unknown {}, bad {}",
        counted("joined"),
        counted("label_unknown"),
        counted("label_bad")
    );
    // What waited past the 10s horizon: the 100 rows nobody labelled, the 5 labels of
    // rows that never came.
    assert!(
        eventually(Duration::from_secs(60), || counted("prediction_expired")
            == 100
            && counted("label_expired") == 5)
        .await,
        "expired: predictions {}, labels {}",
        counted("prediction_expired"),
        counted("label_expired")
    );
    let rows: Vec<serde_json::Value> =
        read_topic(&brokers, "model-accuracy", 5, Duration::from_secs(20))
            .iter()
            .map(|m| serde_json::from_slice(&m.payload).unwrap())
            .collect();
    shutdown.cancel();
    handle.await.unwrap().unwrap();
    assert_eq!(rows.len(), 5, "{rows:?}");

    // The same join, offline: the Parquet rows' probabilities with the labels in the
    // order they were sent, in windows of 100.
    let mut probabilities: HashMap<String, Vec<f32>> = HashMap::new();
    for batch in read_dataset(&root.join("out/rows")) {
        let ids = batch
            .column_by_name("id")
            .unwrap()
            .as_string::<i32>()
            .clone();
        let p = batch
            .column_by_name("probabilities")
            .unwrap()
            .as_fixed_size_list()
            .clone();
        for row in 0..batch.num_rows() {
            let values = p.value(row);
            let values = values.as_primitive::<arrow::datatypes::Float32Type>();
            probabilities.insert(ids.value(row).to_owned(), values.values().to_vec());
        }
    }
    assert_eq!(probabilities.len(), 600);
    let mut accuracies = Vec::new();
    for (window, row) in sent.chunks(WINDOW).zip(&rows) {
        let pairs: Vec<(usize, Vec<f32>)> = window
            .iter()
            .map(|(id, class)| (*class, probabilities[id].clone()))
            .collect();
        let (accuracy, macro_f1, calibration_error) = offline_scores(&pairs);
        assert_eq!(row["version"], "1");
        assert_eq!(row["window_rows"], WINDOW);
        for (name, offline) in [
            ("accuracy", accuracy),
            ("macro_f1", macro_f1),
            ("calibration_error", calibration_error),
        ] {
            let live = row[name].as_f64().unwrap();
            assert!(
                (live - offline).abs() < 1e-9,
                "{name}: live {live}, offline {offline}: {row}"
            );
        }
        let confusion: usize = row["confusion"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|r| r.as_array().unwrap())
            .map(|v| v.as_u64().unwrap() as usize)
            .sum();
        assert_eq!(confusion, WINDOW);
        accuracies.push(accuracy);
    }
    // The model is right on the features' class; the labels disagree with it on a fifth.
    assert!(
        accuracies.iter().all(|a| (0.7..=0.9).contains(a)),
        "{accuracies:?}"
    );
    let gauge = stats
        .live_accuracy(STAGE, "tabular", "1", "accuracy")
        .unwrap();
    assert!(
        (gauge - accuracies[4]).abs() < 1e-12,
        "gauge {gauge}, last window {}",
        accuracies[4]
    );

    // Mistakes in the section are named at their keys.
    let wrong = "      accuracy:\n        id: nope\n        labels: {topic: labels, values: {\"1\": zzz}}\n        window: 0\n        horizon: 0s\n";
    let file = points_pipeline(root, &brokers, wrong, "");
    let error = sluice::pipeline::load(&file)
        .map(|_| ())
        .unwrap_err()
        .to_string();
    for key in [
        "accuracy.id",
        "accuracy.labels.values.1",
        "accuracy.window",
        "accuracy.horizon",
    ] {
        assert!(error.contains(&format!("{STAGE}.{key}")), "{key}: {error}");
    }
}

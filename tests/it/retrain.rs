//! Retraining: exported models predict exactly like their trainer under ONNX Runtime, and
//! the closed loop on the mock cluster: labelled feedback streams through
//! `pipelines/sentiment.yaml`, `sluice retrain` (with `pipelines/retrain-sentiment.yaml`)
//! trains on the accumulated Parquet, publishes only a better candidate, and the running
//! pipeline swaps it in without a restart.

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use arrow::array::AsArray;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rdkafka::mocking::MockCluster;

use crate::common::*;
use sluice::config::job::TrainConfig;
use sluice::config::Device;
use sluice::demo::feeds::feedback::produce;
use sluice::demo::feeds::reviews;
use sluice::model::{DevicePlan, Registry};
use sluice::pipeline::job;
use sluice::retrain::onnx_export::{Classifier, Dense};
use sluice::retrain::trainer::{train, Examples};
use sluice::retrain::{self, RetrainOptions};

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

/// Three classes in five features, on very different scales (so standardization matters).
fn tabular(rows: usize, seed: u64) -> Examples {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut data = Examples {
        width: 5,
        ..Default::default()
    };
    for i in 0..rows {
        let class = i % 3;
        let centre = [
            class as f32 * 3.0,
            (class as f32 - 1.0) * 500.0,
            0.01 * class as f32,
            42.0,
            -(class as f32),
        ];
        data.x.extend(
            centre
                .iter()
                .map(|c| c + rng.random_range(-1.5..1.5) * c.abs().max(1.0) * 0.3),
        );
        data.y.push(class);
    }
    data
}

#[test]
fn exported_models_predict_like_their_trainer_under_onnx_runtime() {
    let data = tabular(900, 1);
    let holdout = tabular(300, 2);
    let labels: Vec<String> = ["a", "b", "c"].map(String::from).to_vec();
    let dir = tempfile::tempdir().unwrap();
    for (name, config) in [
        ("softmax", TrainConfig::default()),
        (
            "mlp",
            TrainConfig {
                hidden: vec![16, 8],
                epochs: 40,
                ..Default::default()
            },
        ),
    ] {
        let model = train(&data, labels.clone(), "features", &config, |_, _| {});
        let path = dir.path().join(format!("{name}.onnx"));
        std::fs::write(&path, model.to_onnx(name)).unwrap();
        let plan = DevicePlan::resolve(Device::Cpu, 0, 0, None, &path, name).unwrap();
        let mut session = plan.open(&path).unwrap();
        let labels_metadata = session.metadata().unwrap().custom("labels").unwrap();
        assert_eq!(labels_metadata, r#"["a","b","c"]"#);
        let tensor = ort::value::TensorRef::from_array_view((
            [holdout.rows(), holdout.width],
            &holdout.x[..],
        ))
        .unwrap();
        let outputs = session.run(ort::inputs!["features" => tensor]).unwrap();
        let (_, probs) = outputs["probabilities"]
            .try_extract_tensor::<f32>()
            .unwrap();
        let mut worst = 0.0_f32;
        let mut right = 0;
        for r in 0..holdout.rows() {
            let own = model.predict_proba(holdout.row(r));
            for (a, b) in own.iter().zip(&probs[r * 3..r * 3 + 3]) {
                worst = worst.max((a - b).abs());
            }
            right += usize::from(
                own.iter()
                    .enumerate()
                    .max_by(|a, b| a.1.total_cmp(b.1))
                    .unwrap()
                    .0
                    == holdout.y[r],
            );
        }
        assert!(
            worst < 1e-5,
            "{name}: ONNX Runtime differs from the trainer by {worst}"
        );
        assert!(
            right as f32 / holdout.rows() as f32 > 0.9,
            "{name}: {right} right"
        );
    }
}

/// A head that says "negative" to everything: the weak version the loop starts from.
fn untrained_head() -> Classifier {
    Classifier {
        input_name: "embedding".into(),
        standardize: None,
        layers: vec![Dense {
            inputs: 384,
            outputs: 2,
            weight: vec![0.0; 768],
            bias: vec![0.1, 0.0],
        }],
        labels: vec!["negative".into(), "positive".into()],
    }
}

/// A private registry: the encoders linked from models/, and an untrained head as version 1.
fn registry_serving_an_untrained_head() -> (tempfile::TempDir, Registry) {
    let models = Path::new(ROOT).join("models");
    assert!(
        models.join("minilm-l6/current").is_file(),
        "models/ is missing: run scripts/setup.sh first"
    );
    let dir = tempfile::tempdir().unwrap();
    for encoder in ["minilm-l6", "minilm-l6-int8"] {
        std::os::unix::fs::symlink(models.join(encoder), dir.path().join(encoder)).unwrap();
    }
    let registry = Registry::new(dir.path());
    let weak = untrained_head();
    let weak_path = dir.path().join("weak.onnx");
    std::fs::write(&weak_path, weak.to_onnx("weak")).unwrap();
    let manifest = weak.manifest("sentiment-head", Default::default(), "untrained");
    registry.publish(&weak_path, manifest, &[], true).unwrap();
    (dir, registry)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_loop_closes_stream_accumulate_retrain_publish_only_if_better_and_swap() {
    let (registry_dir, registry) = registry_serving_an_untrained_head();
    let work = tempfile::tempdir().unwrap();

    let cluster = MockCluster::new(1).unwrap();
    cluster.create_topic("customer-feedback", 2, 1).unwrap();
    let brokers = cluster.bootstrap_servers();
    let out = work.path().join("out");
    let vars: HashMap<&str, String> = HashMap::from([
        ("SLUICE_BROKERS", brokers.clone()),
        ("SLUICE_OUT", out.display().to_string()),
        ("SLUICE_MODELS", registry_dir.path().display().to_string()),
        ("SLUICE_DEVICE", "cpu".to_owned()),
    ]);
    let lookup = |name: &str| vars.get(name).cloned();
    let pipeline = sluice::pipeline::load_with_vars(
        &Path::new(ROOT).join("pipelines/sentiment.yaml"),
        &lookup,
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let Running {
        stats,
        shutdown,
        handle: running,
        stop_on_panic: _stop_on_panic,
    } = spawn_pipeline(pipeline);

    // Wave A: labelled reviews (ratings 1-2 or 4-5) accumulate in Parquet.
    let all = reviews::load(&Path::new(ROOT).join("data/reviews.jsonl"), "holdout").unwrap();
    let picked = reviews::spread(&all, 1_100);
    let (wave_a, wave_b) = picked.split_at(1_000);
    let now = chrono::Utc::now().timestamp_millis();
    produce(
        &brokers,
        "customer-feedback",
        reviews::replay(wave_a, 0.0, now - 3_600_000, 1_000),
    )
    .await
    .unwrap();
    let feedback = out.join("feedback");
    assert!(
        eventually(Duration::from_secs(120), || stats.snapshot().rows_decoded
            == 1_000)
        .await
    );
    assert!(
        eventually(
            Duration::from_secs(30),
            || sluice::sink::parquet::read::count_rows(&feedback).unwrap_or(0) == 1_000
        )
        .await,
        "wave A committed to Parquet"
    );

    // Retrain with the shipped job file: the candidate beats the untrained head: published.
    let job_file = Path::new(ROOT).join("pipelines/retrain-sentiment.yaml");
    let loaded = job::load(&job_file, &lookup).unwrap_or_else(|e| panic!("{e}"));
    let report = tokio::task::spawn_blocking({
        let loaded = loaded.clone();
        move || retrain::run(&loaded, &RetrainOptions::default(), |_, _, _| {})
    })
    .await
    .unwrap()
    .unwrap();
    assert_eq!(
        report.published.as_deref(),
        Some("sentiment-head/2"),
        "{report}"
    );
    assert!(report.candidate.accuracy > 0.7, "{report}");
    assert!(report.onnx_max_abs_diff < 1e-5);
    let (current_version, current_metrics) = report.current.clone().unwrap();
    assert_eq!(current_version, "sentiment-head/1");
    assert!(report.candidate.macro_f1 > current_metrics.macro_f1 + 0.005);
    let published = registry.version("sentiment-head", "2").dir;
    assert!(published.join("report.json").is_file());
    let manifest = registry
        .manifest(&registry.version("sentiment-head", "2"))
        .unwrap();
    let embedding = manifest.profile.as_ref().and_then(|p| p.embedding.clone());
    let embedding = embedding.expect("an embedding profile");
    assert_eq!(embedding.centroid.len(), 384);
    assert_eq!(embedding.cosine_deciles.len(), 9);
    let picture = std::fs::read(published.join("report.png")).unwrap();
    assert_eq!(&picture[1..4], b"PNG");
    assert!(report.roc_auc.unwrap() > 0.75, "{report}");

    // A worse candidate (no training at all) is not published.
    let mut worse = loaded.clone();
    worse.job.trainer.epochs = 0;
    let rejected = tokio::task::spawn_blocking(move || {
        retrain::run(&worse, &RetrainOptions::default(), |_, _, _| {})
    })
    .await
    .unwrap()
    .unwrap();
    assert_eq!(rejected.published, None, "{rejected}");
    assert_eq!(registry.current("sentiment-head").unwrap().version, "2");

    // The running pipeline swaps version 2 in: wave B's rows carry it.
    let serving = eventually(Duration::from_secs(30), || {
        stats.serving_version("stages[2].infer").as_deref() == Some("2")
    })
    .await;
    assert!(serving, "the watcher swapped version 2 in");
    produce(
        &brokers,
        "customer-feedback",
        reviews::replay(wave_b, 0.0, now, 1_000),
    )
    .await
    .unwrap();
    assert!(
        eventually(Duration::from_secs(60), || stats.snapshot().rows_decoded
            == 1_100)
        .await
    );
    shutdown.cancel();
    running.await.unwrap().unwrap();

    let wave_b_ids: std::collections::HashSet<&str> =
        wave_b.iter().map(|r| r.id.as_str()).collect();
    let mut versions: HashMap<(bool, String), usize> = HashMap::new();
    for batch in read_dataset(&feedback) {
        let ids = batch.column_by_name("id").unwrap().as_string::<i32>();
        let model = batch
            .column_by_name("model_version")
            .unwrap()
            .as_string::<i32>();
        for row in 0..batch.num_rows() {
            *versions
                .entry((
                    wave_b_ids.contains(ids.value(row)),
                    model.value(row).to_owned(),
                ))
                .or_default() += 1;
        }
    }
    assert_eq!(
        versions.get(&(false, "sentiment-head/1".into())),
        Some(&1_000),
        "{versions:?}"
    );
    assert_eq!(
        versions.get(&(true, "sentiment-head/2".into())),
        Some(&100),
        "{versions:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retrain_section_runs_the_job_on_its_schedule_inside_the_running_pipeline() {
    let (registry_dir, registry) = registry_serving_an_untrained_head();
    let work = tempfile::tempdir().unwrap();

    // pipelines/sentiment.yaml with a `retrain` section, written where the test runs.
    let text = std::fs::read_to_string(Path::new(ROOT).join("pipelines/sentiment.yaml"))
        .unwrap()
        .replace("../schemas/", &format!("{ROOT}/schemas/"))
        .replace(
            "path: reference/",
            &format!("path: {ROOT}/pipelines/reference/"),
        );
    let file = work.path().join("sentiment-retrain.yaml");
    std::fs::write(
        &file,
        format!("{text}retrain:\n  job: {ROOT}/pipelines/retrain-sentiment.yaml\n  every: 3s\n"),
    )
    .unwrap();

    let cluster = MockCluster::new(1).unwrap();
    cluster.create_topic("customer-feedback", 2, 1).unwrap();
    let brokers = cluster.bootstrap_servers();
    let out = work.path().join("out");
    let vars: HashMap<&str, String> = HashMap::from([
        ("SLUICE_BROKERS", brokers.clone()),
        ("SLUICE_OUT", out.display().to_string()),
        ("SLUICE_MODELS", registry_dir.path().display().to_string()),
        ("SLUICE_DEVICE", "cpu".to_owned()),
    ]);
    let pipeline = sluice::pipeline::load_with_vars(&file, &|name| vars.get(name).cloned())
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(pipeline.retrain.is_some());
    let Running {
        stats,
        shutdown,
        handle: running,
        stop_on_panic: _stop_on_panic,
    } = spawn_pipeline(pipeline);

    let all = reviews::load(&Path::new(ROOT).join("data/reviews.jsonl"), "holdout").unwrap();
    let picked = reviews::spread(&all, 650);
    let (first, later) = picked.split_at(600);
    let now = chrono::Utc::now().timestamp_millis();
    produce(
        &brokers,
        "customer-feedback",
        reviews::replay(first, 0.0, now - 3_600_000, 1_000),
    )
    .await
    .unwrap();
    let published = eventually(Duration::from_secs(120), || {
        registry
            .current("sentiment-head")
            .map(|v| v.version != "1")
            .unwrap_or(false)
    })
    .await;
    assert!(
        published,
        "the pipeline's own schedule published a better head"
    );
    // Once the watcher serves it, new rows carry a trained version.
    let current = registry.current("sentiment-head").unwrap().version;
    let serving = eventually(Duration::from_secs(30), || {
        stats.serving_version("stages[2].infer").as_deref() == Some(current.as_str())
    })
    .await;
    assert!(serving, "the watcher swapped the trained version in");
    // Every first record decoded before counting the later ones (the head may be
    // published while the first ones are still on their way).
    assert!(
        eventually(Duration::from_secs(120), || stats.snapshot().rows_decoded
            == first.len() as u64)
        .await,
        "{} of {} first records decoded",
        stats.snapshot().rows_decoded,
        first.len()
    );
    let before = stats.snapshot().rows_decoded;
    produce(
        &brokers,
        "customer-feedback",
        reviews::replay(later, 0.0, now, 1_000),
    )
    .await
    .unwrap();
    assert!(
        eventually(Duration::from_secs(60), || stats.snapshot().rows_decoded
            == before + 50)
        .await
    );
    shutdown.cancel();
    running
        .await
        .unwrap()
        .expect("the stream kept running beside the retrain runs");

    let later_ids: std::collections::HashSet<&str> = later.iter().map(|r| r.id.as_str()).collect();
    let mut later_versions = Vec::new();
    for batch in read_dataset(&out.join("feedback")) {
        let ids = batch.column_by_name("id").unwrap().as_string::<i32>();
        let model = batch
            .column_by_name("model_version")
            .unwrap()
            .as_string::<i32>();
        for row in 0..batch.num_rows() {
            if later_ids.contains(ids.value(row)) {
                later_versions.push(model.value(row).to_owned());
            }
        }
    }
    assert_eq!(later_versions.len(), 50);
    assert!(
        later_versions.iter().all(|v| v != "sentiment-head/1"),
        "{later_versions:?}"
    );
}

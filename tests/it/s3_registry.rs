//! Models and reference data on object storage, against an S3-protocol server process
//! (moto): a registry copied to a bucket serves a running pipeline, a version published
//! there is swapped in under the stream and a corrupt one is rejected; a lookup table is
//! read from the bucket; a retrain job reads a Delta table on S3 (only its live files) and
//! publishes to the S3 registry.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use arrow::array::AsArray;
use object_store::ObjectStoreExt;
use rdkafka::mocking::MockCluster;
use tokio_util::sync::CancellationToken;

use crate::common::s3::{Kind, S3Server, ACCESS_KEY, SECRET_KEY};
use crate::common::{eventually, python, read_dataset};
use sluice::demo;
use sluice::demo::feeds::feedback::produce;
use sluice::model::Registry;
use sluice::telemetry::Stats;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");
const BUCKET: &str = "lake";

/// Uploads every file under `dir` to `prefix` in the bucket (what `aws s3 sync` does).
async fn sync(s3: &S3Server, dir: &Path, prefix: &str) {
    let store = s3.store(BUCKET);
    let mut pending = vec![dir.to_owned()];
    while let Some(at) = pending.pop() {
        for entry in std::fs::read_dir(&at).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                pending.push(path);
                continue;
            }
            let relative = path
                .strip_prefix(dir)
                .unwrap()
                .to_string_lossy()
                .into_owned();
            let key = object_store::path::Path::from(format!("{prefix}/{relative}"));
            store
                .put(&key, std::fs::read(&path).unwrap().into())
                .await
                .unwrap();
        }
    }
}

/// `pipelines/maintenance-process.yaml` with its models and its lookup table in the bucket.
fn maintenance_on_s3(s3: &S3Server, dir: &Path) -> PathBuf {
    let text = std::fs::read_to_string(Path::new(ROOT).join("pipelines/maintenance-process.yaml"))
        .unwrap()
        .replace("../schemas/", &format!("{ROOT}/schemas/"))
        .replace(
            "path: reference/assets.csv",
            &format!("path: s3://{BUCKET}/reference/assets.csv"),
        );
    assert!(text.contains("s3://"), "the lookup path was replaced");
    let file = dir.join("maintenance-s3.yaml");
    std::fs::write(&file, format!("{text}{}", s3.storage_yaml())).unwrap();
    file
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_registry_on_s3_serves_swaps_a_new_version_in_and_rejects_a_corrupt_one() {
    registry_under_a_running_stream(Kind::Moto).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_registry_on_seaweedfs_serves_swaps_a_new_version_in_and_rejects_a_corrupt_one() {
    registry_under_a_running_stream(Kind::Seaweed).await;
}

async fn registry_under_a_running_stream(kind: Kind) {
    let s3 = S3Server::of(kind);
    s3.create_bucket(BUCKET);
    // The shipped registry's process-failure model and the lookup table, copied up.
    sync(
        &s3,
        &Path::new(ROOT).join("models/process-failure"),
        "models/process-failure",
    )
    .await;
    sync(
        &s3,
        &Path::new(ROOT).join("pipelines/reference"),
        "reference",
    )
    .await;
    let shipped = std::fs::read_to_string(Path::new(ROOT).join("models/process-failure/current"))
        .unwrap()
        .trim()
        .to_owned();

    let cluster = MockCluster::new(1).unwrap();
    cluster.create_topic("sensor-readings", 2, 1).unwrap();
    let brokers = cluster.bootstrap_servers();
    let work = tempfile::tempdir().unwrap();
    let file = maintenance_on_s3(&s3, work.path());
    let out = work.path().join("out");
    let vars: HashMap<&str, String> = HashMap::from([
        ("SLUICE_BROKERS", brokers.clone()),
        ("SLUICE_OUT", out.display().to_string()),
        ("SLUICE_MODELS", format!("s3://{BUCKET}/models")),
        ("SLUICE_DEVICE", "cpu".to_owned()),
        ("SLUICE_TEST_S3_KEY", ACCESS_KEY.to_owned()),
        ("SLUICE_TEST_S3_SECRET", SECRET_KEY.to_owned()),
    ]);
    let pipeline = sluice::pipeline::load_with_vars(&file, &|name| vars.get(name).cloned())
        .unwrap_or_else(|e| panic!("{e}"));
    let stats = Arc::new(Stats::default());
    let shutdown = CancellationToken::new();
    let _stop_on_panic = shutdown.clone().drop_guard();
    let running = {
        let (pipeline, stats, shutdown) = (pipeline.clone(), stats.clone(), shutdown.clone());
        tokio::spawn(async move { sluice::runtime::run(&pipeline, shutdown, stats).await })
    };
    let infer = "stages[1].infer";
    assert!(
        eventually(Duration::from_secs(60), || {
            stats.serving_version(infer).as_deref() == Some(shipped.as_str())
        })
        .await,
        "the shipped version is served from the bucket"
    );

    let now = chrono::Utc::now().timestamp_millis();
    let first = demo::process_readings(1, 2_000, now - 6 * 3_600_000);
    let mut produced = produce(&brokers, "sensor-readings", first).await.unwrap();
    let consumed = |n: u64| {
        let stats = stats.clone();
        move || stats.snapshot().records_in == n
    };
    assert!(eventually(Duration::from_secs(60), consumed(produced)).await);

    // Version 2, published to the bucket by another process's registry client.
    let registry = tokio::task::spawn_blocking({
        let storage = s3.storage();
        move || Registry::open(Path::new(&format!("s3://{BUCKET}/models")), &storage).unwrap()
    })
    .await
    .unwrap();
    let (v2, corrupt_manifest) = tokio::task::spawn_blocking({
        let registry = registry.clone();
        move || {
            let serving = registry.current("process-failure").unwrap();
            let manifest = registry.manifest(&serving).unwrap();
            let v2 = registry
                .publish(&serving.model_path(), manifest.clone(), &[], true)
                .unwrap();
            (v2, manifest)
        }
    })
    .await
    .unwrap();
    let expected = (shipped.parse::<u64>().unwrap() + 1).to_string();
    assert_eq!(v2.version, expected);
    assert!(
        eventually(Duration::from_secs(30), || {
            stats.serving_version(infer).as_deref() == Some(expected.as_str())
        })
        .await,
        "the watcher swapped the new version in from the bucket"
    );
    let second = demo::process_readings(2, 2_000, now - 3 * 3_600_000);
    produced += produce(&brokers, "sensor-readings", second).await.unwrap();
    assert!(eventually(Duration::from_secs(60), consumed(produced)).await);

    // A corrupt version: rejected, the serving one stays.
    let corrupt = work.path().join("corrupt.onnx");
    std::fs::write(&corrupt, b"this is not an ONNX model").unwrap();
    let v3 = tokio::task::spawn_blocking({
        let registry = registry.clone();
        move || {
            registry
                .publish(&corrupt, corrupt_manifest, &[], true)
                .unwrap()
        }
    })
    .await
    .unwrap();
    assert!(
        eventually(Duration::from_secs(30), || stats
            .rejected_version(infer, &v3.version))
        .await,
        "the corrupt version was rejected"
    );
    let third = demo::process_readings(3, 2_000, now);
    produced += produce(&brokers, "sensor-readings", third).await.unwrap();
    assert!(eventually(Duration::from_secs(60), consumed(produced)).await);
    assert_eq!(stats.serving_version(infer), Some(expected.clone()));

    // Operators move the pointer: a rollback leaves the corrupt version, then the shipped
    // version is promoted again; the stream follows without a restart.
    let (from, to) = tokio::task::spawn_blocking({
        let registry = registry.clone();
        move || registry.rollback("process-failure").unwrap()
    })
    .await
    .unwrap();
    assert_eq!((from, to.as_str()), (v3.version.clone(), expected.as_str()));
    tokio::task::spawn_blocking({
        let (registry, shipped) = (registry.clone(), shipped.clone());
        move || registry.promote("process-failure", &shipped).unwrap()
    })
    .await
    .unwrap();
    assert!(
        eventually(Duration::from_secs(30), || {
            stats.serving_version(infer).as_deref() == Some(shipped.as_str())
        })
        .await,
        "the promoted version is served again"
    );
    shutdown.cancel();
    let summary = running.await.unwrap().unwrap();
    assert_eq!(summary.dead_letters, 0);

    // Windows carry the version that inferred them, and the asset columns from the bucket.
    let mut versions: BTreeMap<String, usize> = BTreeMap::new();
    let mut sites = 0;
    for batch in read_dataset(&out.join("windows")) {
        let model = batch
            .column_by_name("model_version")
            .unwrap()
            .as_string::<i32>();
        let site = batch.column_by_name("site").unwrap();
        sites += site.len() - site.null_count();
        for row in 0..batch.num_rows() {
            *versions.entry(model.value(row).to_owned()).or_default() += 1;
        }
    }
    let allowed = [
        format!("process-failure/{shipped}"),
        format!("process-failure/{expected}"),
    ];
    assert!(versions.keys().all(|v| allowed.contains(v)), "{versions:?}");
    assert!(versions.contains_key(&allowed[1]), "{versions:?}");
    assert!(sites > 0, "the lookup table from the bucket joined");
}

/// `sluice models` with the standard AWS environment for `s3`.
fn models_cli(s3: &S3Server, args: &[&str]) -> String {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_sluice"))
        .arg("models")
        .args(args)
        .env("AWS_ENDPOINT_URL", &s3.endpoint)
        .env("AWS_ALLOW_HTTP", "true")
        .env("AWS_REGION", "us-east-1")
        .env("AWS_ACCESS_KEY_ID", ACCESS_KEY)
        .env("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let errors = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{text}{errors}");
    assert!(!errors.contains(SECRET_KEY) && !text.contains(SECRET_KEY));
    text
}

#[test]
fn sluice_models_copies_a_local_registry_to_a_bucket_once() {
    let s3 = S3Server::of(Kind::Seaweed);
    s3.create_bucket(BUCKET);
    let from = format!("{ROOT}/models");
    let to = format!("s3://{BUCKET}/models");
    let copy = [
        "copy",
        &from,
        &to,
        "--model",
        "process-failure",
        "--model",
        "bearing-health",
    ];
    let first = models_cli(&s3, &copy);
    assert!(first.contains("2 copied, 0 already there"), "{first}");
    let again = models_cli(&s3, &copy);
    assert!(again.contains("0 copied, 2 already there"), "{again}");
    // The bucket lists what the directory lists for those two models.
    let listed = models_cli(&s3, &["list", &to]);
    let local: Vec<String> = models_cli(&s3, &["list", &from])
        .lines()
        .filter(|l| l.starts_with("process-failure:") || l.starts_with("bearing-health:"))
        .map(str::to_owned)
        .collect();
    assert_eq!(listed.lines().collect::<Vec<_>>(), local);
    assert!(listed.starts_with("bearing-health: current "), "{listed}");

    // A second version with other metrics, published straight into the bucket; then the
    // pointer moved by promote and rollback, and the two versions compared.
    let (first, second) = {
        let registry = Registry::open(Path::new(&to), &s3.storage()).unwrap();
        let current = registry.current("bearing-health").unwrap();
        let mut manifest = registry.manifest(&current).unwrap();
        manifest
            .metrics
            .insert("holdout_accuracy".into(), serde_json::json!(0.5));
        let next = registry
            .publish(&current.model_path(), manifest, &[], true)
            .unwrap();
        (current.version, next.version)
    };
    let shown = models_cli(&s3, &["show", &to, "bearing-health"]);
    assert!(
        shown.starts_with(&format!("bearing-health/{second} ")),
        "{shown}"
    );
    assert!(
        shown.contains("holdout_accuracy") && shown.contains("0.5000"),
        "{shown}"
    );
    let diff = models_cli(&s3, &["diff", &to, "bearing-health", &first, &second]);
    let accuracy = diff
        .lines()
        .find(|l| l.starts_with("holdout_accuracy"))
        .unwrap();
    assert!(accuracy.trim_end().ends_with("0.5000"), "{diff}");
    let back = models_cli(&s3, &["rollback", &to, "bearing-health"]);
    assert_eq!(
        back.trim(),
        format!("bearing-health: current {second} -> {first}")
    );
    let promoted = models_cli(&s3, &["promote", &to, "bearing-health", &second]);
    assert_eq!(
        promoted.trim(),
        format!("bearing-health: current {first} -> {second}")
    );
    let listed = models_cli(&s3, &["list", &to]);
    assert!(
        listed.contains(&format!(
            "bearing-health: current {second}, versions {first}, {second}"
        )),
        "{listed}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retrain_job_reads_a_delta_table_on_s3_and_publishes_to_the_s3_registry() {
    let s3 = S3Server::start();
    s3.create_bucket(BUCKET);
    // A Delta table written by Python's deltalake: 100 rows that a later overwrite
    // removes, then 600 live rows in two commits. Reading removed files would add rows.
    let script = format!(
        r#"
import os, datetime, pyarrow as pa, deltalake
opts = {{'AWS_ENDPOINT_URL': '{endpoint}', 'AWS_ACCESS_KEY_ID': '{ACCESS_KEY}',
        'AWS_SECRET_ACCESS_KEY': '{SECRET_KEY}', 'AWS_REGION': 'us-east-1',
        'AWS_ALLOW_HTTP': 'true', 'AWS_S3_ALLOW_UNSAFE_RENAME': 'true'}}
now = datetime.datetime.now(datetime.timezone.utc)
def rows(ids, stale=False):
    noise = lambda i: ((i * 7919) % 100) / 100
    return pa.table({{
        'id': [('g%d' if stale else 'r%d') % i for i in ids],
        '_timestamp': pa.array([now] * len(ids), pa.timestamp('ms', tz='UTC')),
        'f1': [0.0 if stale else (i % 3) * 4.0 + noise(i) for i in ids],
        'f2': [0.0 if stale else -(i % 3) * 2.0 + noise(i + 1) for i in ids],
        'label': ['a' if stale else 'abc'[i % 3] for i in ids],
        'date': ['2026-11-0%d' % (1 + i % 2) for i in ids]}})
uri = 's3://{BUCKET}/train'
def write(table, mode):
    deltalake.write_deltalake(uri, table, mode=mode, partition_by=['date'], storage_options=opts)
write(rows(range(100), stale=True), 'append')
write(rows(range(0, 300)), 'overwrite')
write(rows(range(300, 600)), 'append')
print(deltalake.DeltaTable(uri, storage_options=opts).version(), flush=True)
os._exit(0)
"#,
        endpoint = s3.endpoint
    );
    assert_eq!(python(&script), "2");

    let work = tempfile::tempdir().unwrap();
    let job_file = work.path().join("retrain.yaml");
    std::fs::write(
        &job_file,
        format!(
            "name: delta-job\ndataset:\n  path: s3://{BUCKET}/train\n  features: [f1, f2]\n  label:\n    column: label\n  holdout: 0.2\nmodels: s3://{BUCKET}/models\nmodel:\n  name: tabular\n  input: features\n  labels: [a, b, c]\ntrainer:\n  epochs: 40\n{}",
            s3.storage_yaml()
        ),
    )
    .unwrap();
    let lookup = |name: &str| s3.lookup(name);
    let loaded = sluice::pipeline::job::load(&job_file, &lookup).unwrap_or_else(|e| panic!("{e}"));
    let report = tokio::task::spawn_blocking(move || {
        sluice::retrain::run(&loaded, &Default::default(), |_, _, _| {})
    })
    .await
    .unwrap()
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        report.train_rows + report.holdout_rows,
        600,
        "only the live files: {report}"
    );
    assert_eq!(report.published.as_deref(), Some("tabular/1"), "{report}");
    assert!(report.candidate.accuracy > 0.9, "{report}");

    // In the bucket: the version whole, with its report, and `current` pointing at it.
    let keys = s3.keys(BUCKET, "models/tabular").await;
    for file in [
        "1/.claim",
        "1/manifest.json",
        "1/model.onnx",
        "1/report.json",
        "current",
    ] {
        assert!(
            keys.contains(&format!("models/tabular/{file}")),
            "{file} missing: {keys:?}"
        );
    }
    // (The registry is kept: its cache goes with it.)
    let (_registry, current, manifest) = tokio::task::spawn_blocking({
        let storage = s3.storage();
        move || {
            let registry =
                Registry::open(Path::new(&format!("s3://{BUCKET}/models")), &storage).unwrap();
            let current = registry.current("tabular").unwrap();
            let manifest = registry.manifest(&current).unwrap();
            (registry, current, manifest)
        }
    })
    .await
    .unwrap();
    assert_eq!(
        (current.version.as_str(), manifest.version.as_str()),
        ("1", "1")
    );
    assert!(current.model_path().is_file(), "downloaded into the cache");
}

//! Parquet datasets on an S3-protocol server process (moto, from PyPI): exactly once under
//! kill -9, a zombie writer fenced by the conditional create of the next manifest, an
//! object store that goes away mid-run, and storage mistakes reported at their key path
//! without the credentials.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use rand::{Rng, SeedableRng};
use rdkafka::mocking::MockCluster;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

use crate::common::noida::{terminate, Broker};
use crate::common::s3::{Kind, S3Server, SECRET_KEY};
use crate::common::*;
use sluice::batch::TopicPartition;
use sluice::demo::feeds::feedback::{produce, FeedbackGenerator};
use sluice::sink::parquet::commit::{CommitError, Dataset, StagedFile};
use sluice::sink::parquet::store;

const BUCKET: &str = "lake";

/// A test pipeline file whose datasets are `s3://lake/PREFIX/{feedback,dead_letters}`
/// on `endpoint`.
fn s3_pipeline(spec: TestPipeline<'_>, prefix: &str, s3: &S3Server, endpoint: &str) -> PathBuf {
    let file = spec.write();
    let out = spec.out.display().to_string();
    for dataset in ["feedback", "dead_letters"] {
        patch(
            &file,
            &format!("path: {out}/{dataset}"),
            &format!("path: s3://{BUCKET}/{prefix}/{dataset}"),
        );
    }
    let mut text = std::fs::read_to_string(&file).unwrap();
    text.push_str(&s3.storage_yaml().replace(&s3.endpoint, endpoint));
    std::fs::write(&file, text).unwrap();
    file
}

fn load(file: &Path, s3: &S3Server) -> sluice::pipeline::Pipeline {
    sluice::pipeline::load_with_vars(file, &|name| s3.lookup(name))
        .unwrap_or_else(|e| panic!("{e}"))
}

/// Keys of the bucket under `prefix` that are not committed data or manifests.
async fn leftovers(s3: &S3Server, prefix: &str) -> Vec<String> {
    s3.keys(BUCKET, prefix)
        .await
        .into_iter()
        .filter(|k| k.contains("_sluice/staging/") || k.ends_with(".tmp"))
        .collect()
}

/// Rows of the dataset under `prefix`, read by pyarrow straight from the S3 server.
fn pyarrow_rows(s3: &S3Server, prefix: &str) -> usize {
    let script = format!(
        "import pyarrow.dataset as ds, pyarrow.fs as fs\n\
         s3 = fs.S3FileSystem(access_key='sluice-test-key', secret_key='{SECRET_KEY}', \
         endpoint_override='127.0.0.1:{port}', scheme='http', region='us-east-1')\n\
         print(ds.dataset('{BUCKET}/{prefix}', filesystem=s3, format='parquet', \
         partitioning='hive').count_rows())",
        port = s3.port
    );
    python(&script).parse().unwrap()
}

fn spawn_sluice(pipeline: &Path, log: &Path, s3: &S3Server) -> Child {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .unwrap();
    let mut command = Command::new(env!("CARGO_BIN_EXE_sluice"));
    command
        .arg("run")
        .arg(pipeline)
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(log);
    for (k, v) in s3.env() {
        command.env(k, v);
    }
    command.spawn().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_while_writing_to_s3_loses_and_duplicates_nothing() {
    crash_while_writing_to_s3(Kind::Moto, false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_while_writing_to_seaweedfs_loses_and_duplicates_nothing() {
    crash_while_writing_to_s3(Kind::Seaweed, false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_while_appending_to_a_delta_table_on_s3_loses_and_duplicates_nothing() {
    crash_while_writing_to_s3(Kind::Moto, true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_while_appending_to_a_delta_table_on_seaweedfs_loses_and_duplicates_nothing() {
    crash_while_writing_to_s3(Kind::Seaweed, true).await;
}

/// Kills the binary four times while it writes to the S3 server (a Parquet dataset, or a
/// Delta table when `delta`), runs it to the end, and checks every record is there once.
async fn crash_while_writing_to_s3(kind: Kind, delta: bool) {
    const TOPIC: &str = "feedback";
    const PARTITIONS: i32 = 3;
    let s3 = S3Server::of(kind);
    s3.create_bucket(BUCKET);
    let broker = Broker::start().unwrap();
    broker.create_topic(TOPIC, PARTITIONS).await.unwrap();
    let sent: Vec<_> = FeedbackGenerator::new(14, 0.01, recent_ms() - 200_000_000, 2_000)
        .take(30_000)
        .collect();
    // Some records arrive only before the last run, so that it has work to do (a run
    // stopped before it has set up its signal handling just dies).
    produce(&broker.address, TOPIC, sent[..24_000].to_vec())
        .await
        .unwrap();
    let good = sent.iter().filter(|r| r.well_formed).count();
    let bad = sent.len() - good;

    let out = tempfile::tempdir().unwrap();
    let pipeline = s3_pipeline(
        TestPipeline {
            brokers: &broker.address,
            topic: TOPIC,
            group: "s3crash",
            out: out.path(),
            output_topic: None,
            dead_letter_topic: None,
            max_rows: 1_000,
            roll_age: "300ms",
            properties: &[("group.instance.id", "sluice-s3-crash-0")],
        },
        "crash",
        &s3,
        &s3.endpoint,
    );
    if delta {
        patch(
            &pipeline,
            "  - parquet:\n      path: s3://lake/crash/feedback\n      partition_by: [date(_timestamp)]\n",
            "  - delta:\n      path: s3://lake/crash/table\n      partition_by: [_partition]\n      checkpoint_interval: 5\n",
        );
    }
    let log = out.path().join("sluice.log");
    let seed: u64 = std::env::var("SLUICE_CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random);
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    for round in 0..4 {
        let mut child = spawn_sluice(&pipeline, &log, &s3);
        let wait = Duration::from_millis(rng.random_range(500..3_000));
        tokio::time::sleep(wait).await;
        child.kill().unwrap();
        child.wait().unwrap();
        let done = committed(&broker.address, "s3crash", TOPIC, PARTITIONS);
        eprintln!("round {round} (seed {seed}): killed after {wait:?}; committed {done:?}");
    }
    produce(&broker.address, TOPIC, sent[24_000..].to_vec())
        .await
        .unwrap();
    let hw = high_watermarks(&broker.address, TOPIC, PARTITIONS);
    let mut child = spawn_sluice(&pipeline, &log, &s3);
    let caught_up = eventually(Duration::from_secs(180), || {
        committed(&broker.address, "s3crash", TOPIC, PARTITIONS) == hw
    })
    .await;
    let status = terminate(&mut child, Duration::from_secs(60));
    let log_text = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(
        caught_up,
        "the last run commits everything (seed {seed}):\n{log_text}"
    );
    assert!(status.is_some_and(|s| s.success()), "{status:?}");
    assert!(
        !log_text.contains(SECRET_KEY),
        "the secret key never reaches the log"
    );

    let local = tempfile::tempdir().unwrap();
    let root = s3.download(BUCKET, "crash", local.path()).await;
    let letters = read_dataset(&root.join("dead_letters"));
    assert_eq!(letters.iter().map(|b| b.num_rows()).sum::<usize>(), bad);
    if delta {
        let options = format!(
            "{{'AWS_ENDPOINT_URL': '{}', 'AWS_ACCESS_KEY_ID': 'sluice-test-key', \
             'AWS_SECRET_ACCESS_KEY': '{SECRET_KEY}', 'AWS_REGION': 'us-east-1', \
             'AWS_ALLOW_HTTP': 'true'}}",
            s3.endpoint
        );
        let (rows, ids, txn) = crate::delta::read_with_python(
            &format!("s3://{BUCKET}/crash/table"),
            &options,
            "sluice:test",
            PARTITIONS,
        );
        assert_eq!(
            (rows, ids),
            (good, good),
            "every good record once (seed {seed})"
        );
        let last: Vec<Option<i64>> = hw.iter().map(|h| Some(h - 1)).collect();
        assert_eq!(txn, last, "the txn versions are the committed offsets");
        return;
    }
    let rows = read_dataset(&root.join("feedback"));
    let ids = count_strings(&rows, "id");
    assert_eq!(ids.len(), good, "every good record (seed {seed})");
    assert!(ids.values().all(|&n| n == 1), "no duplicates (seed {seed})");
    assert_eq!(leftovers(&s3, "crash").await, Vec::<String>::new());
    assert_eq!(
        pyarrow_rows(&s3, "crash/feedback"),
        good,
        "pyarrow reads it from S3"
    );
}

/// A staged file with one (empty) Parquet-free payload: the protocol does not look inside.
fn stage(dataset: &Dataset, tp: &TopicPartition, first: i64, last: i64) -> StagedFile {
    use std::io::Write;
    let (tmp_path, mut file) = dataset.create_temp("d=1", tp, first, "group").unwrap();
    file.write_all(format!("rows {first}-{last}").as_bytes())
        .unwrap();
    StagedFile {
        dir: "d=1".into(),
        tmp_path,
        name: Dataset::file_name(tp, first, last),
        rows: 1,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_zombie_writer_is_fenced_by_the_new_owner_s_claim() {
    zombie_writer(Kind::Moto).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_zombie_writer_is_fenced_on_seaweedfs_too() {
    zombie_writer(Kind::Seaweed).await;
}

/// Two writers for one partition: the older one's commits are refused once the new owner
/// has recovered.
async fn zombie_writer(kind: Kind) {
    let s3 = S3Server::of(kind);
    s3.create_bucket(BUCKET);
    let storage = s3.storage();
    let open = || {
        let location = sluice::storage::open(Path::new("s3://lake/zombie"), &storage).unwrap();
        Dataset::new(store::open(location).unwrap(), None)
    };
    let tp = TopicPartition::new("t", 0);
    let (old, new) = (open(), open());
    tokio::task::block_in_place(|| {
        assert_eq!(old.recover(&tp).unwrap().durable_through, None);
        old.commit(&tp, 0, 9, &[stage(&old, &tp, 0, 9)], &[])
            .unwrap();
        // A rebalance: the partition moves; the old owner does not know yet.
        assert_eq!(new.recover(&tp).unwrap().durable_through, Some(9));
        let refused = old.commit(&tp, 10, 19, &[stage(&old, &tp, 10, 19)], &[]);
        assert!(
            matches!(refused, Err(CommitError::Fenced { .. })),
            "{refused:?}"
        );
        new.commit(&tp, 10, 14, &[stage(&new, &tp, 10, 14)], &[])
            .unwrap();
        new.commit(&tp, 15, 19, &[stage(&new, &tp, 15, 19)], &[])
            .unwrap();
        // Later still, the zombie tries once more: the number it would take is gone, but a
        // later manifest exists.
        let refused = old.commit(&tp, 20, 29, &[stage(&old, &tp, 20, 29)], &[]);
        assert!(matches!(refused, Err(CommitError::Fenced { .. })));
    });
    let keys = s3.keys(BUCKET, "zombie").await;
    let data: Vec<&String> = keys.iter().filter(|k| k.ends_with(".parquet")).collect();
    assert_eq!(
        data.iter()
            .map(|k| k.rsplit('/').next().unwrap())
            .collect::<Vec<_>>(),
        [
            Dataset::file_name(&tp, 0, 9),
            Dataset::file_name(&tp, 10, 14),
            Dataset::file_name(&tp, 15, 19)
        ],
        "only the owners' commits are visible: {keys:?}"
    );
    assert_eq!(leftovers(&s3, "zombie").await, Vec::<String>::new());
    let manifests: Vec<&String> = keys.iter().filter(|k| k.contains("/manifests/")).collect();
    assert_eq!(
        manifests.len(),
        1,
        "older manifests are deleted: {manifests:?}"
    );
}

/// A TCP proxy in front of the S3 server that can be cut and restored, on its own thread
/// and runtime (so that nothing the pipeline does on the test's runtime can stall it).
struct Proxy {
    port: u16,
    cut: CancellationToken,
    thread: std::thread::JoinHandle<()>,
}

impl Proxy {
    fn start(port: u16, target: u16) -> Proxy {
        let listener = std::net::TcpListener::bind(("127.0.0.1", port)).unwrap();
        listener.set_nonblocking(true).unwrap();
        let cut = CancellationToken::new();
        let thread = std::thread::spawn({
            let cut = cut.clone();
            move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap();
                runtime.block_on(async move {
                    let listener = TcpListener::from_std(listener).unwrap();
                    loop {
                        let accepted = tokio::select! {
                            _ = cut.cancelled() => return,
                            accepted = listener.accept() => accepted,
                        };
                        let Ok((mut client, _)) = accepted else {
                            continue;
                        };
                        let cut = cut.clone();
                        tokio::spawn(async move {
                            let Ok(mut server) = TcpStream::connect(("127.0.0.1", target)).await
                            else {
                                return;
                            };
                            tokio::select! {
                                _ = cut.cancelled() => {}
                                _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                            }
                        });
                    }
                });
            }
        });
        Proxy { port, cut, thread }
    }

    fn cut(self) {
        self.cut.cancel();
        let _ = self.thread.join();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_that_goes_away_stops_the_run_without_committing_past_durable_data() {
    let s3 = S3Server::start();
    s3.create_bucket(BUCKET);
    let proxy = Proxy::start(free_port(), s3.port);
    let cluster = MockCluster::new(1).unwrap();
    cluster.create_topic("feedback", 2, 1).unwrap();
    let brokers = cluster.bootstrap_servers();
    let records = |seed, count| -> Vec<_> {
        FeedbackGenerator::new(seed, 0.0, recent_ms(), 1_000)
            .take(count)
            .collect()
    };
    produce(&brokers, "feedback", records(1, 2_000))
        .await
        .unwrap();
    let out = tempfile::tempdir().unwrap();
    let endpoint = format!("http://127.0.0.1:{}", proxy.port);
    let file = s3_pipeline(
        TestPipeline {
            brokers: &brokers,
            topic: "feedback",
            group: "outage",
            out: out.path(),
            output_topic: None,
            dead_letter_topic: None,
            max_rows: 200,
            roll_age: "200ms",
            properties: &[],
        },
        "outage",
        &s3,
        &endpoint,
    );
    let mut pipeline = load(&file, &s3);
    pipeline.storage_retry = Duration::from_secs(3);
    let running = spawn_pipeline(pipeline);
    let first_committed = eventually(Duration::from_secs(60), || {
        committed(&brokers, "outage", "feedback", 2)
            .iter()
            .sum::<i64>()
            == 2_000
            || running.handle.is_finished()
    })
    .await;
    if running.handle.is_finished() {
        panic!("the run ended early: {:?}", running.handle.await);
    }
    assert!(
        first_committed,
        "the first records are committed while the store answers: {:?}, {:?}",
        committed(&brokers, "outage", "feedback", 2),
        running.stats.snapshot()
    );
    let proxy_port = proxy.port;
    proxy.cut();
    produce(&brokers, "feedback", records(2, 2_000))
        .await
        .unwrap();
    let ended = tokio::time::timeout(Duration::from_secs(120), running.handle)
        .await
        .expect("the run ends once its storage retries are spent")
        .unwrap();
    let error = ended.expect_err("the run fails").to_string();
    assert!(!error.contains(SECRET_KEY), "{error}");
    // Nothing past the durable data was committed.
    let local = tempfile::tempdir().unwrap();
    let root = s3.download(BUCKET, "outage", local.path()).await;
    let rows = read_dataset(&root.join("feedback"));
    let durable = offsets_by_partition(&rows);
    let done = committed(&brokers, "outage", "feedback", 2);
    for (partition, offset) in done.iter().enumerate() {
        let max = durable
            .get(&(partition as i32))
            .and_then(|o| o.iter().max().copied())
            .unwrap_or(-1);
        assert!(
            *offset <= max + 1,
            "partition {partition}: committed {offset} past durable {max}"
        );
    }
    // The store is back: a new run finishes the job, every record once.
    let proxy = Proxy::start(proxy_port, s3.port);
    let pipeline = load(&file, &s3);
    let summary = consume_all(pipeline, 2_000).await;
    assert!(summary.records_in > 0);
    let local = tempfile::tempdir().unwrap();
    let root = s3.download(BUCKET, "outage", local.path()).await;
    // (The two productions share ids: offsets tell the records apart.)
    let offsets = offsets_by_partition(&read_dataset(&root.join("feedback")));
    let hw = high_watermarks(&brokers, "feedback", 2);
    for (partition, end) in hw.iter().enumerate() {
        let mut got = offsets
            .get(&(partition as i32))
            .cloned()
            .unwrap_or_default();
        got.sort_unstable();
        assert_eq!(
            got,
            (0..*end).collect::<Vec<_>>(),
            "partition {partition}: every offset once"
        );
    }
    assert_eq!(hw.iter().sum::<i64>(), 4_000);
    proxy.cut();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn storage_mistakes_name_their_key_and_hide_the_credentials() {
    let s3 = S3Server::start();
    let cluster = MockCluster::new(1).unwrap();
    cluster.create_topic("feedback", 1, 1).unwrap();
    let brokers = cluster.bootstrap_servers();
    let out = tempfile::tempdir().unwrap();
    let spec = |group| TestPipeline {
        brokers: &brokers,
        topic: "feedback",
        group,
        out: out.path(),
        output_topic: None,
        dead_letter_topic: None,
        max_rows: 100,
        roll_age: "1s",
        properties: &[],
    };
    let file = s3_pipeline(spec("bad"), "x", &s3, &s3.endpoint);
    let lookup = |name: &str| s3.lookup(name);
    // Known before any request: the scheme, the bucket, option names.
    for (from, to, expected) in [
        ("path: s3://lake/x/feedback", "path: ftp://lake/x/feedback", "sinks[0].parquet.path"),
        ("path: s3://lake/x/feedback", "path: s3:///feedback", "names no bucket"),
        ("    allow_http: true\n", "    allow_http: true\n    options:\n      aws_no_such_option: ${SLUICE_TEST_S3_SECRET}\n", "unknown option `aws_no_such_option`"),
    ] {
        let original = std::fs::read_to_string(&file).unwrap();
        patch(&file, from, to);
        let error = sluice::pipeline::load_with_vars(&file, &lookup)
            .map(|_| ())
            .expect_err(expected)
            .to_string();
        std::fs::write(&file, original).unwrap();
        assert!(error.contains(expected), "{error}");
        assert!(!error.contains(SECRET_KEY), "{error}");
    }
    // Known at start: an endpoint nobody answers on, a bucket that does not exist.
    for (endpoint, expected) in [
        (
            format!("http://127.0.0.1:{}", free_port()),
            "cannot be reached",
        ),
        (s3.endpoint.clone(), "cannot be reached"),
    ] {
        let file = s3_pipeline(spec("start"), "y", &s3, &endpoint);
        let pipeline = load(&file, &s3);
        let running = spawn_pipeline(pipeline);
        let error = tokio::time::timeout(Duration::from_secs(60), running.handle)
            .await
            .expect("start fails promptly")
            .unwrap()
            .expect_err("no store, no run");
        let text = error_chain(&error);
        assert!(
            text.contains("sinks[0].parquet") && text.contains(expected),
            "{text}"
        );
        assert!(!text.contains(SECRET_KEY), "{text}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_credentials_fail_start_naming_the_sink_without_the_secret() {
    // SeaweedFS checks signatures (moto accepts any).
    let s3 = S3Server::of(Kind::Seaweed);
    s3.create_bucket(BUCKET);
    let cluster = MockCluster::new(1).unwrap();
    cluster.create_topic("feedback", 1, 1).unwrap();
    let brokers = cluster.bootstrap_servers();
    let out = tempfile::tempdir().unwrap();
    let spec = TestPipeline {
        brokers: &brokers,
        topic: "feedback",
        group: "wrong-key",
        out: out.path(),
        output_topic: None,
        dead_letter_topic: None,
        max_rows: 100,
        roll_age: "1s",
        properties: &[],
    };
    let file = s3_pipeline(spec, "denied", &s3, &s3.endpoint);
    let wrong = "not-the-secret-either-do-not-print";
    let pipeline = sluice::pipeline::load_with_vars(&file, &|name| match name {
        "SLUICE_TEST_S3_KEY" => Some(crate::common::s3::ACCESS_KEY.to_owned()),
        "SLUICE_TEST_S3_SECRET" => Some(wrong.to_owned()),
        _ => None,
    })
    .expect("the settings themselves are valid");
    let running = spawn_pipeline(pipeline);
    let error = tokio::time::timeout(Duration::from_secs(60), running.handle)
        .await
        .expect("start fails promptly")
        .unwrap()
        .expect_err("no access, no run");
    let text = error_chain(&error);
    assert!(
        text.contains("sinks[0].parquet") && text.contains("SignatureDoesNotMatch"),
        "{text}"
    );
    assert!(
        !text.contains(wrong) && !text.contains(SECRET_KEY),
        "{text}"
    );
    assert!(
        s3.keys(BUCKET, "denied").await.is_empty(),
        "nothing was written"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retrain_job_reads_its_dataset_from_s3() {
    use object_store::ObjectStoreExt;
    let s3 = S3Server::start();
    s3.create_bucket(BUCKET);
    let store = s3.store(BUCKET);
    let put = |key: &str, bytes: Vec<u8>| {
        let store = store.clone();
        let key = object_store::path::Path::from(key);
        async move { store.put(&key, bytes.into()).await.unwrap() }
    };
    put(
        "train/date=2026-11-01/t-0-a.parquet",
        tabular_parquet(0..300),
    )
    .await;
    put(
        "train/date=2026-11-02/t-0-b.parquet",
        tabular_parquet(300..600),
    )
    .await;
    // Bookkeeping and staging are not the dataset: reading them would fail the job.
    put(
        "train/_sluice/staging/date=x/t-0-c.parquet",
        b"not parquet".to_vec(),
    )
    .await;
    put(
        "train/_sluice/manifests/t-0/00000000000000000001.json",
        b"{}".to_vec(),
    )
    .await;

    let work = tempfile::tempdir().unwrap();
    let job_file = work.path().join("retrain.yaml");
    let storage = s3.storage_yaml();
    std::fs::write(
        &job_file,
        format!(
            "name: s3-job\ndataset:\n  path: s3://{BUCKET}/train\n  features: [f1, f2]\n  label:\n    column: label\n  holdout: 0.2\nmodels: {}\nmodel:\n  name: tabular\n  input: features\n  labels: [a, b, c]\ntrainer:\n  epochs: 40\n{storage}",
            work.path().join("models").display()
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
    assert_eq!(report.train_rows + report.holdout_rows, 600, "{report}");
    assert_eq!(report.published.as_deref(), Some("tabular/1"), "{report}");
    assert!(report.candidate.accuracy > 0.9, "{report}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backfill_reads_its_input_files_from_s3() {
    use object_store::ObjectStoreExt;
    let s3 = S3Server::start();
    s3.create_bucket(BUCKET);
    let store = s3.store(BUCKET);
    let records: Vec<_> = FeedbackGenerator::new(21, 0.0, recent_ms(), 1_000)
        .take(600)
        .collect();
    for (name, part) in [
        ("in/a.jsonl", &records[..250]),
        ("in/b.jsonl", &records[250..]),
    ] {
        let mut lines = Vec::new();
        for record in part {
            lines.extend_from_slice(&record.payload);
            lines.push(b'\n');
        }
        store
            .put(&object_store::path::Path::from(name), lines.into())
            .await
            .unwrap();
    }
    // Not matched by the pattern.
    store
        .put(
            &object_store::path::Path::from("in/notes.txt"),
            b"x".to_vec().into(),
        )
        .await
        .unwrap();

    let out = tempfile::tempdir().unwrap();
    let file = TestPipeline {
        brokers: "127.0.0.1:9",
        topic: "feedback",
        group: "s3-input",
        out: out.path(),
        output_topic: None,
        dead_letter_topic: None,
        max_rows: 100,
        roll_age: "1s",
        properties: &[],
    }
    .write();
    let mut text = std::fs::read_to_string(&file).unwrap();
    text.push_str(&s3.storage_yaml());
    std::fs::write(&file, text).unwrap();
    let pipeline = load(&file, &s3);
    let summary = sluice::backfill::run_files(
        &pipeline,
        &format!("s3://{BUCKET}/in/*.jsonl"),
        CancellationToken::new(),
        Default::default(),
        false,
    )
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(summary.stats.records_in, 600, "{summary}");
    let ids = count_strings(&read_dataset(&out.path().join("feedback")), "id");
    assert_eq!(ids.len(), 600);
    assert!(ids.values().all(|&n| n == 1));
    // A pattern that matches nothing says so.
    let error = sluice::backfill::run_files(
        &pipeline,
        &format!("s3://{BUCKET}/in/*.parquet"),
        CancellationToken::new(),
        Default::default(),
        false,
    )
    .await
    .map(|_| ())
    .expect_err("nothing to read")
    .to_string();
    assert!(error.contains("no object matches"), "{error}");
}

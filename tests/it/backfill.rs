//! `sluice backfill` on the mock cluster, with `pipelines/demo.yaml`:
//! - a backfill of the range a live run consumed writes the same files, rows and dead
//!   letters, row for row, into a fresh directory; into the live directory it replaces
//!   the same files without duplicating a row; and it leaves the live group's commits
//!   alone;
//! - a backfill stopped part-way and started again with the same arguments finishes with
//!   every offset exactly once;
//! - `--from` picks the first record at or after a time (offsets_for_times, which the mock
//!   cluster lacks: this one runs against a noida-db broker process);
//! - `--input` JSON-lines files run like a topic (file = partition, line = offset), and the
//!   Parquet dataset they produced, as `--input` again, gives back the same records.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use arrow::util::display::array_value_to_string;
use rdkafka::mocking::MockCluster;
use tokio_util::sync::CancellationToken;

use crate::common;

use crate::common::committed;
use crate::common::noida::Broker;
use sluice::backfill;
use sluice::demo;
use sluice::demo::feeds::feedback::{produce, FeedbackGenerator};
use sluice::pipeline::Pipeline;
use sluice::sink::parquet::read::dataset_files;
use sluice::source::bounded::{PartitionFilter, RangeSpec};
use sluice::telemetry::Stats;

const TOPIC: &str = "customer-feedback";
const PARTITIONS: i32 = 3;
const RECORDS: usize = 6_000;
const START_MS: i64 = 1_795_000_000_000;

fn repo(path: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(path)
}

fn pipeline(brokers: &str, out: &Path) -> Pipeline {
    demo::load_pipeline(&repo("pipelines/demo.yaml"), brokers, out).unwrap()
}

/// Every row of a dataset by (partition, offset), as text per column; `skip` columns left
/// out (write-time metadata).
fn rows(root: &Path, skip: &[&str]) -> BTreeMap<(i64, i64), Vec<String>> {
    let mut all = BTreeMap::new();
    for batch in common::read_dataset(root) {
        let schema = batch.schema();
        let partitions = common::int_column(&batch, "_partition");
        let offsets = common::int_column(&batch, "_offset");
        for row in 0..batch.num_rows() {
            let values: Vec<String> = schema
                .fields()
                .iter()
                .enumerate()
                .filter(|(_, f)| !skip.contains(&f.name().as_str()))
                .map(|(i, f)| {
                    format!(
                        "{}={}",
                        f.name(),
                        array_value_to_string(batch.column(i), row).unwrap()
                    )
                })
                .collect();
            let key = (partitions[row].unwrap(), offsets[row].unwrap());
            assert!(
                all.insert(key, values).is_none(),
                "{key:?} twice in {}",
                root.display()
            );
        }
    }
    all
}

async fn setup() -> (
    MockCluster<'static, rdkafka::producer::DefaultProducerContext>,
    String,
    u64,
) {
    let cluster = MockCluster::new(1).unwrap();
    cluster.create_topic(TOPIC, PARTITIONS, 1).unwrap();
    let brokers = cluster.bootstrap_servers();
    let records = FeedbackGenerator::new(5, 0.02, START_MS, 10).take(RECORDS);
    let produced = produce(&brokers, TOPIC, records).await.unwrap();
    (cluster, brokers, produced)
}

async fn backfill(
    pipeline: &Pipeline,
    spec: &RangeSpec,
    stop_after: Option<u64>,
) -> backfill::BackfillSummary {
    let stats = Arc::new(Stats::default());
    let shutdown = CancellationToken::new();
    if let Some(limit) = stop_after {
        let (stats, shutdown) = (stats.clone(), shutdown.clone());
        tokio::spawn(async move {
            while stats.records_in() < limit {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            shutdown.cancel();
        });
    }
    backfill::run(
        pipeline,
        spec,
        &PartitionFilter::All,
        shutdown,
        stats,
        false,
    )
    .await
    .unwrap()
}

/// `sluice backfill --input PATTERN`, to the end.
async fn backfill_files(pipeline: &Pipeline, pattern: &str) -> backfill::BackfillSummary {
    backfill::run_files(
        pipeline,
        pattern,
        CancellationToken::new(),
        Arc::default(),
        false,
    )
    .await
    .unwrap()
}

const ALL: RangeSpec = RangeSpec::Times {
    from: None,
    to: None,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backfill_writes_what_the_live_pipeline_wrote_row_for_row() {
    let (_cluster, brokers, produced) = setup().await;
    let live_out = tempfile::tempdir().unwrap();
    let live = pipeline(&brokers, live_out.path());
    common::consume_all(live.clone(), produced).await;
    let group = live.group_id();
    let live_commits = committed(&brokers, &group, TOPIC, PARTITIONS);
    assert_eq!(live_commits.iter().sum::<i64>(), produced as i64);

    let backfill_out = tempfile::tempdir().unwrap();
    let summary = backfill(&pipeline(&brokers, backfill_out.path()), &ALL, None).await;
    assert!(summary.complete, "{summary}");
    assert_eq!(summary.stats.records_in, produced);
    assert!(summary.partitions.iter().all(|p| p.3));

    let live_rows = rows(&live_out.path().join("feedback"), &[]);
    assert_eq!(
        live_rows.len() as u64,
        produced - summary.stats.dead_letters
    );
    assert_eq!(rows(&backfill_out.path().join("feedback"), &[]), live_rows);
    let skip = ["failed_at"];
    let live_dead = rows(&live_out.path().join("dead_letters"), &skip);
    assert!(!live_dead.is_empty());
    assert_eq!(
        rows(&backfill_out.path().join("dead_letters"), &skip),
        live_dead
    );
    // Same files: the names come from offsets, not from how batches were cut.
    assert_eq!(
        files(&backfill_out.path().join("feedback")),
        files(&live_out.path().join("feedback"))
    );
    assert_eq!(
        file_names(&backfill_out.path().join("dead_letters")),
        file_names(&live_out.path().join("dead_letters"))
    );

    // Into the live dataset itself: the backfill replaces the files, no row twice.
    let live_files = files(&live_out.path().join("feedback"));
    let summary = backfill(&live, &ALL, None).await;
    assert!(summary.complete, "{summary}");
    assert_eq!(files(&live_out.path().join("feedback")), live_files);
    assert_eq!(rows(&live_out.path().join("feedback"), &[]), live_rows);
    assert_eq!(
        rows(&live_out.path().join("dead_letters"), &skip),
        live_dead
    );
    assert!(
        !live_out
            .path()
            .join("feedback/_sluice/backfills")
            .read_dir()
            .unwrap()
            .any(|_| true),
        "a finished backfill leaves no bookkeeping"
    );
    assert_eq!(
        committed(&brokers, &group, TOPIC, PARTITIONS),
        live_commits,
        "the backfill moved the live group's offsets"
    );
}

/// Visible files of a dataset, relative to its root.
fn files(root: &Path) -> Vec<PathBuf> {
    dataset_files(root)
        .unwrap()
        .into_iter()
        .map(|f| f.strip_prefix(root).unwrap().to_owned())
        .collect()
}

/// File names only (dead letters sit under the date they failed, which differs by run).
fn file_names(root: &Path) -> Vec<String> {
    let mut names: Vec<String> = dataset_files(root)
        .unwrap()
        .iter()
        .map(|f| f.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_backfill_started_again_finishes_without_duplicates() {
    let (_cluster, brokers, produced) = setup().await;
    let out = tempfile::tempdir().unwrap();
    let mut p = pipeline(&brokers, out.path());
    // Small batches, so the stop lands mid-range.
    let sluice::config::SourceConfig::Kafka(kafka) = &mut p.config.source;
    kafka.batch.max_rows = 50;
    let first = backfill(&p, &ALL, Some(produced / 10)).await;
    assert!(!first.complete, "{first}");
    let written_first = rows(&out.path().join("feedback"), &[]).len();
    assert!(written_first > 0 && (written_first as u64) < produced);

    let second = backfill(&p, &ALL, None).await;
    assert!(second.complete, "{second}");
    // `rows` fails on a duplicate (partition, offset); every offset is there once.
    let written = rows(&out.path().join("feedback"), &[]);
    let dead = rows(&out.path().join("dead_letters"), &["failed_at"]);
    assert_eq!(written.len() + dead.len(), produced as usize);
    for key in written.keys() {
        assert!(!dead.contains_key(key));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn from_starts_at_the_first_record_at_or_after_the_time() {
    let broker = Broker::start().unwrap();
    broker.create_topic(TOPIC, PARTITIONS).await.unwrap();
    let brokers = broker.address.clone();
    // A broker process applies time retention: records from an hour ago.
    let start_ms = common::recent_ms();
    let records = FeedbackGenerator::new(5, 0.02, start_ms, 10).take(RECORDS);
    let produced = produce(&brokers, TOPIC, records).await.unwrap();
    let out = tempfile::tempdir().unwrap();
    // The generator spaces records 10 ms apart from start_ms.
    let from = start_ms + 10 * (RECORDS as i64 / 2);
    let summary = backfill(
        &pipeline(&brokers, out.path()),
        &RangeSpec::Times {
            from: Some(from),
            to: None,
        },
        None,
    )
    .await;
    assert!(summary.complete, "{summary}");
    let written = rows(&out.path().join("feedback"), &[]);
    let dead = rows(&out.path().join("dead_letters"), &["failed_at"]);
    assert_eq!(
        summary.stats.records_in as usize,
        written.len() + dead.len()
    );
    assert!(summary.stats.records_in < produced);
    let earliest = written
        .values()
        .map(|row| {
            row.iter()
                .find(|v| v.starts_with("_timestamp="))
                .unwrap()
                .clone()
        })
        .min()
        .unwrap();
    let expected = chrono::DateTime::from_timestamp_millis(from).unwrap();
    assert!(
        earliest >= format!("_timestamp={}", expected.format("%Y-%m-%dT%H:%M:%S")),
        "{earliest} before {expected}"
    );
    assert_eq!(summary.stats.records_in, produced / 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_backfill_like_a_topic_and_rerun_without_duplicates() {
    // The Kafka sinks of demo.yaml still need a cluster.
    let cluster = MockCluster::new(1).unwrap();
    let brokers = cluster.bootstrap_servers();
    let input = tempfile::tempdir().unwrap();
    let records: Vec<_> = FeedbackGenerator::new(8, 0.02, START_MS, 10)
        .take(2_500)
        .collect();
    for (i, chunk) in records.chunks(1_000).enumerate() {
        let mut text = Vec::new();
        for record in chunk {
            text.extend_from_slice(&record.payload);
            text.push(b'\n');
        }
        std::fs::write(input.path().join(format!("part-{i}.jsonl")), text).unwrap();
    }
    let pattern = input.path().join("*.jsonl").display().to_string();
    let out = tempfile::tempdir().unwrap();
    let p = pipeline(&brokers, out.path());
    for run in 0..2 {
        let summary = backfill_files(&p, &pattern).await;
        assert!(summary.complete, "run {run}: {summary}");
        assert_eq!(summary.partitions.len(), 3);
        assert_eq!(summary.stats.records_in, 2_500);
    }
    let written = rows(&out.path().join("feedback"), &[]);
    let dead = rows(&out.path().join("dead_letters"), &["failed_at"]);
    let good = records.iter().filter(|r| r.well_formed).count();
    assert_eq!(written.len(), good, "each line once, also after the rerun");
    assert_eq!(dead.len(), records.len() - good);
    // File i is partition i, a line's number its offset.
    for (i, record) in records.iter().enumerate() {
        let key = ((i / 1_000) as i64, (i % 1_000) as i64);
        assert_eq!(written.contains_key(&key), record.well_formed, "{key:?}");
        if record.well_formed {
            let id = format!("id={}", record.key);
            assert!(written[&key].contains(&id), "{key:?}: {:?}", written[&key]);
            assert!(written[&key].contains(&"_topic=files".to_owned()));
        }
    }

    // The written dataset as Parquet input: the same records come out again.
    let again = tempfile::tempdir().unwrap();
    let pattern = out
        .path()
        .join("feedback/**/*.parquet")
        .display()
        .to_string();
    let summary = backfill_files(&pipeline(&brokers, again.path()), &pattern).await;
    assert!(summary.complete, "{summary}");
    assert_eq!(summary.stats.records_in, good as u64);
    assert_eq!(summary.stats.dead_letters, 0);
    let by_id = |rows: BTreeMap<(i64, i64), Vec<String>>| -> BTreeMap<String, Vec<String>> {
        rows.into_values()
            .map(|values| {
                let fields: Vec<String> =
                    values.into_iter().filter(|v| !v.starts_with('_')).collect();
                (
                    fields
                        .iter()
                        .find(|v| v.starts_with("id="))
                        .unwrap()
                        .clone(),
                    fields,
                )
            })
            .collect()
    };
    assert_eq!(
        by_id(rows(&again.path().join("feedback"), &[])),
        by_id(written)
    );
}

//! The `delta` sink: a Delta Lake table that the Python `deltalake` package and polars
//! (`scan_delta`) read with every record once, whose log carries each source partition's
//! last offset (`txn`), that a restart resumes without duplicates, and that refuses a
//! writer whose partition another writer has moved on.

use std::path::Path;

use rdkafka::mocking::MockCluster;

use crate::common::*;
use sluice::demo::feeds::feedback::{produce, FeedbackGenerator};

/// A test pipeline whose first sink is a Delta table at `table` instead of Parquet.
pub fn delta_pipeline(
    spec: TestPipeline<'_>,
    table: &str,
    partition_by: &str,
) -> std::path::PathBuf {
    let file = spec.write();
    let out = spec.out.display().to_string();
    patch(
        &file,
        &format!("  - parquet:\n      path: {out}/feedback\n      partition_by: [date(_timestamp)]\n"),
        &format!("  - delta:\n      path: {table}\n      partition_by: [{partition_by}]\n      checkpoint_interval: 5\n"),
    );
    file
}

/// (The scripts leave with `os._exit`: deltalake 1.6 can abort at interpreter teardown
/// after a read, "terminate called without an active exception".)
///
/// What Python's `deltalake` and polars read from the table: rows, distinct ids, and the
/// `txn` version of each partition's application id.
pub fn read_with_python(
    table: &str,
    storage: &str,
    app: &str,
    partitions: i32,
) -> (usize, usize, Vec<Option<i64>>) {
    let script = format!(
        "import json, os, deltalake, polars as pl\n\
         opts = {storage}\n\
         dt = deltalake.DeltaTable('{table}', storage_options=opts)\n\
         t = dt.to_pyarrow_table()\n\
         ids = set(t.column('id').to_pylist())\n\
         n = pl.scan_delta('{table}', storage_options=opts).select(pl.len()).collect().item()\n\
         assert n == t.num_rows, (n, t.num_rows)\n\
         txn = [dt.transaction_version('{app}:feedback:%d' % p) for p in range({partitions})]\n\
         print(json.dumps([t.num_rows, len(ids), txn]), flush=True)\n\
         os._exit(0)"
    );
    serde_json::from_str(&python(&script)).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delta_table_holds_every_record_once_with_its_offsets_in_the_log() {
    let cluster = MockCluster::new(1).unwrap();
    cluster.create_topic("feedback", 3, 1).unwrap();
    let brokers = cluster.bootstrap_servers();
    let records = |seed, count| -> Vec<_> {
        FeedbackGenerator::new(seed, 0.05, recent_ms(), 1_000)
            .take(count)
            .collect()
    };
    let first = records(3, 3_000);
    produce(&brokers, "feedback", first.clone()).await.unwrap();
    let out = tempfile::tempdir().unwrap();
    let table = out.path().join("table");
    let file = delta_pipeline(
        TestPipeline {
            brokers: &brokers,
            topic: "feedback",
            group: "delta",
            out: out.path(),
            output_topic: None,
            dead_letter_topic: None,
            max_rows: 250,
            roll_age: "200ms",
            properties: &[],
        },
        &table.display().to_string(),
        "_partition",
    );
    let pipeline = sluice::pipeline::load(&file).unwrap_or_else(|e| panic!("{e}"));
    consume_all(pipeline, 3_000).await;
    // A second run resumes where the table is.
    let second = records(4, 1_000);
    produce(&brokers, "feedback", second.clone()).await.unwrap();
    let pipeline = sluice::pipeline::load(&file).unwrap_or_else(|e| panic!("{e}"));
    consume_all(pipeline, 1_000).await;

    let good = first
        .iter()
        .chain(&second)
        .filter(|r| r.well_formed)
        .count();
    let (rows, _, txn) = read_with_python(&table.display().to_string(), "{}", "sluice:test", 3);
    assert_eq!(rows, good, "every good record once");
    let hw = high_watermarks(&brokers, "feedback", 3);
    let last: Vec<Option<i64>> = hw.iter().map(|h| Some(h - 1)).collect();
    assert_eq!(txn, last, "each partition's txn version is its last offset");
    // Rows carry their provenance; no offset twice.
    let offsets = delta_offsets(&table);
    for (partition, got) in offsets.iter().enumerate() {
        let unique: std::collections::BTreeSet<_> = got.iter().collect();
        assert_eq!(
            unique.len(),
            got.len(),
            "partition {partition}: no offset twice"
        );
    }
    assert!(
        std::fs::read_dir(table.join("_delta_log"))
            .unwrap()
            .any(|e| e
                .unwrap()
                .file_name()
                .to_string_lossy()
                .contains(".checkpoint.")),
        "checkpoints are written"
    );
    assert!(
        std::fs::read_dir(&table).unwrap().any(|e| e
            .unwrap()
            .file_name()
            .to_string_lossy()
            .starts_with("_partition=")),
        "files are in partition directories"
    );
}

/// Offsets per partition in the table, read by `deltalake`.
fn delta_offsets(table: &Path) -> Vec<Vec<i64>> {
    let script = format!(
        "import json, os, deltalake\n\
         t = deltalake.DeltaTable('{}').to_pyarrow_table(columns=['_partition', '_offset'])\n\
         out = {{}}\n\
         for p, o in zip(t.column('_partition').to_pylist(), t.column('_offset').to_pylist()):\n    out.setdefault(p, []).append(o)\n\
         print(json.dumps([out.get(p, []) for p in range(max(out) + 1)]), flush=True)\n\
         os._exit(0)",
        table.display()
    );
    serde_json::from_str(&python(&script)).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delta_mistakes_are_found_at_validate() {
    let out = tempfile::tempdir().unwrap();
    let spec = TestPipeline {
        brokers: "127.0.0.1:9",
        topic: "feedback",
        group: "bad-delta",
        out: out.path(),
        output_topic: None,
        dead_letter_topic: None,
        max_rows: 100,
        roll_age: "1s",
        properties: &[],
    };
    for (partition_by, expected) in [
        (
            "nope",
            "partition column `nope` is not among the rows' columns",
        ),
        ("_timestamp", "partition column `_timestamp` is Timestamp"),
    ] {
        let file = delta_pipeline(
            spec_clone(&spec),
            &out.path().join("t").display().to_string(),
            partition_by,
        );
        let error = sluice::pipeline::load(&file)
            .map(|_| ())
            .expect_err(expected)
            .to_string();
        assert!(
            error.contains("sinks[0].delta.partition_by") && error.contains(expected),
            "{error}"
        );
    }
}

fn spec_clone<'a>(spec: &TestPipeline<'a>) -> TestPipeline<'a> {
    TestPipeline { ..*spec }
}

//! Pipelines against librdkafka's in-process mock cluster (real Kafka protocol, real
//! consumer groups): every record exactly once in Parquet with its values, every bad
//! record in the dead letters with a reason, offsets committed, nothing lost across a
//! rebalance or a restart.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use arrow::array::AsArray;
use rdkafka::mocking::MockCluster;
use tokio_util::sync::CancellationToken;

use crate::common::*;
use sluice::demo::feeds::feedback::{produce, FeedbackGenerator, SampleRecord};
use sluice::runtime;
use sluice::telemetry::Stats;

fn records(seed: u64, count: usize, malformed_rate: f64) -> Vec<SampleRecord> {
    FeedbackGenerator::new(seed, malformed_rate, 1_795_305_600_000, 7_000)
        .take(count)
        .collect()
}

/// The JSON object a well-formed sample record was made from.
fn json_of(record: &SampleRecord) -> serde_json::Value {
    serde_json::from_slice(&record.payload).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_record_lands_once_with_its_values_and_bad_records_land_in_dead_letters() {
    let cluster = MockCluster::new(1).unwrap();
    cluster.create_topic("feedback", 3, 1).unwrap();
    let brokers = cluster.bootstrap_servers();
    let sent = records(1, 3_000, 0.05);
    produce(&brokers, "feedback", sent.clone()).await.unwrap();
    let good: Vec<&SampleRecord> = sent.iter().filter(|r| r.well_formed).collect();
    let bad: Vec<&SampleRecord> = sent.iter().filter(|r| !r.well_formed).collect();
    assert!(bad.len() > 50, "the sample has malformed records");

    let out = tempfile::tempdir().unwrap();
    let pipeline = TestPipeline {
        brokers: &brokers,
        topic: "feedback",
        group: "values",
        out: out.path(),
        output_topic: Some("clean"),
        dead_letter_topic: Some("dlq"),
        max_rows: 500,
        roll_age: "10m",
        properties: &[],
    }
    .load();
    let Running {
        stats,
        shutdown,
        handle: running,
        stop_on_panic: _stop_on_panic,
    } = spawn_pipeline(pipeline);
    assert!(
        eventually(Duration::from_secs(60), || stats.snapshot().records_in
            == 3_000)
        .await
    );
    shutdown.cancel();
    let summary = running.await.unwrap().unwrap();
    assert_eq!(summary.rows_decoded as usize, good.len());
    assert_eq!(summary.dead_letters as usize, bad.len());

    // Parquet: every good record exactly once, values as sent.
    let rows = read_dataset(&out.path().join("feedback"));
    let ids = count_strings(&rows, "id");
    assert_eq!(ids.len(), good.len());
    assert!(ids.values().all(|&n| n == 1), "no duplicates");
    let sent_by_id: HashMap<String, serde_json::Value> = good
        .iter()
        .map(|r| (json_of(r)["id"].as_str().unwrap().to_owned(), json_of(r)))
        .collect();
    for batch in &rows {
        let id = batch.column_by_name("id").unwrap().as_string::<i32>();
        let text = batch.column_by_name("text").unwrap().as_string::<i32>();
        let rating = int_column(batch, "rating");
        for i in 0..batch.num_rows() {
            let sent = &sent_by_id[id.value(i)];
            assert_eq!(text.value(i), sent["text"].as_str().unwrap());
            assert_eq!(rating[i], sent["rating"].as_i64());
        }
    }
    // The shutdown rolled every open file: nothing is left half-written.
    assert!(temp_files(out.path()).is_empty());

    // Dead letters: each bad record once, with reason, offset and original bytes.
    let letters = read_dataset(&out.path().join("dead_letters"));
    let payloads: HashSet<Vec<u8>> = letters
        .iter()
        .flat_map(|b| {
            let p = b.column_by_name("payload").unwrap().as_binary::<i32>();
            p.iter()
                .map(|v| v.unwrap_or_default().to_vec())
                .collect::<Vec<_>>()
        })
        .collect();
    assert_eq!(
        letters.iter().map(|b| b.num_rows()).sum::<usize>(),
        bad.len()
    );
    for record in &bad {
        assert!(
            payloads.contains(&record.payload),
            "bad record kept with its bytes"
        );
    }
    let reasons = count_strings(&letters, "reason");
    assert!(
        reasons.keys().any(|r| r.starts_with("not valid JSON")),
        "{reasons:?}"
    );
    assert!(reasons.keys().any(|r| r.contains("UTF-8")), "{reasons:?}");
    assert!(
        reasons.keys().any(|r| r.contains("max_record_bytes")),
        "{reasons:?}"
    );
    assert!(
        reasons
            .keys()
            .any(|r| r.starts_with("does not match schema")),
        "{reasons:?}"
    );

    // Kafka outputs: one JSON message per good row, dead letters with context headers.
    let clean = read_topic(&brokers, "clean", good.len(), Duration::from_secs(20));
    assert_eq!(clean.len(), good.len());
    let first: serde_json::Value = serde_json::from_slice(&clean[0].payload).unwrap();
    assert!(
        first["id"].is_string() && first["_offset"].is_i64(),
        "{first}"
    );
    assert_eq!(
        clean[0].key.as_deref(),
        first["id"].as_str().map(str::as_bytes)
    );
    let dlq = read_topic(&brokers, "dlq", bad.len(), Duration::from_secs(20));
    assert_eq!(dlq.len(), bad.len());
    for message in &dlq {
        assert_eq!(message.headers["sluice.source.topic"], "feedback");
        assert_eq!(message.headers["sluice.error.stage"], "decode");
        assert!(!message.headers["sluice.error.reason"].is_empty());
        assert!(message.headers["sluice.source.offset"]
            .parse::<i64>()
            .is_ok());
    }

    // Offsets: committed up to the end of every partition.
    assert_eq!(
        committed(&brokers, "values", "feedback", 3),
        high_watermarks(&brokers, "feedback", 3)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_pipeline_resumes_from_its_commits_without_duplicates() {
    let cluster = MockCluster::new(1).unwrap();
    cluster.create_topic("feedback", 2, 1).unwrap();
    let brokers = cluster.bootstrap_servers();
    let out = tempfile::tempdir().unwrap();
    let test_pipeline = TestPipeline {
        brokers: &brokers,
        topic: "feedback",
        group: "restart",
        out: out.path(),
        output_topic: None,
        dead_letter_topic: None,
        max_rows: 300,
        roll_age: "1s",
        properties: &[],
    };
    let all = records(2, 2_000, 0.0);
    for (round, chunk) in all.chunks(1_000).enumerate() {
        produce(&brokers, "feedback", chunk.to_vec()).await.unwrap();
        let pipeline = test_pipeline.load();
        let Running {
            stats,
            shutdown,
            handle: running,
            stop_on_panic: _stop_on_panic,
        } = spawn_pipeline(pipeline);
        assert!(
            eventually(Duration::from_secs(60), || stats.snapshot().records_in
                >= 1_000)
            .await
        );
        shutdown.cancel();
        let summary = running.await.unwrap().unwrap();
        assert_eq!(
            summary.records_in, 1_000,
            "round {round} reads only what is new"
        );
        // The commit at shutdown got the coordinator's answer (it once waited out its
        // 15 s deadline and reported a failure while the commit had succeeded).
        let mut metrics = String::new();
        prometheus_client::encoding::text::encode(&mut metrics, &stats.registry("t")).unwrap();
        let sync = |outcome: &str| {
            metrics.lines().any(|l| {
                l.contains("commits_total{")
                    && l.contains("mode=\"sync\"")
                    && l.contains(&format!("outcome=\"{outcome}\""))
            })
        };
        assert!(sync("ok") && !sync("failed"), "round {round}:\n{metrics}");
    }
    let ids = count_strings(&read_dataset(&out.path().join("feedback")), "id");
    assert_eq!(ids.len(), 2_000);
    assert!(ids.values().all(|&n| n == 1));
}

/// With its brokers gone at shutdown the pipeline still stops: the final offset commit
/// waits for the coordinator only until its deadline (librdkafka's synchronous commit would
/// wait for ever), and what the sinks made durable stays written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pipeline_whose_brokers_are_gone_still_stops() {
    let cluster = MockCluster::new(1).unwrap();
    cluster.create_topic("feedback", 2, 1).unwrap();
    let brokers = cluster.bootstrap_servers();
    let out = tempfile::tempdir().unwrap();
    produce(&brokers, "feedback", records(2, 200, 0.0))
        .await
        .unwrap();
    let running =
        spawn_pipeline(TestPipeline::parquet_only(&brokers, "feedback", "gone", out.path()).load());
    let written = || running.stats.snapshot().parquet_rows >= 200;
    assert!(eventually(Duration::from_secs(60), written).await);
    drop(cluster);
    running.shutdown.cancel();
    let stopped = tokio::time::timeout(Duration::from_secs(60), running.handle).await;
    assert!(
        stopped.is_ok(),
        "the pipeline did not stop within 60 s of losing its brokers"
    );
    let ids = count_strings(&read_dataset(&out.path().join("feedback")), "id");
    assert_eq!(ids.len(), 200);
}

/// `batch.close_when_idle`: a batch is cut as soon as the consumer has nothing more to
/// hand over, long before its `max_wait` (10 minutes here) or `max_rows`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_when_idle_cuts_a_batch_when_the_consumer_runs_dry() {
    let cluster = MockCluster::new(1).unwrap();
    cluster.create_topic("feedback", 2, 1).unwrap();
    let brokers = cluster.bootstrap_servers();
    let out = tempfile::tempdir().unwrap();
    let all = records(4, 10, 0.0);
    produce(&brokers, "feedback", all[..5].to_vec())
        .await
        .unwrap();
    let file = TestPipeline {
        max_rows: 1000,
        ..TestPipeline::parquet_only(&brokers, "feedback", "idle", out.path())
    }
    .write();
    patch(
        &file,
        "      max_wait: 100ms\n",
        "      max_wait: 10m\n      close_when_idle: true\n",
    );
    let running = spawn_pipeline(sluice::pipeline::load(&file).unwrap());
    let stats = running.stats.clone();
    let decoded = |n: u64| {
        let stats = stats.clone();
        move || stats.snapshot().rows_decoded >= n
    };
    assert!(eventually(Duration::from_secs(60), decoded(5)).await);
    produce(&brokers, "feedback", all[5..].to_vec())
        .await
        .unwrap();
    assert!(eventually(Duration::from_secs(60), decoded(10)).await);
    running.shutdown.cancel();
    running.handle.await.unwrap().unwrap();
    let ids = count_strings(&read_dataset(&out.path().join("feedback")), "id");
    assert_eq!(ids.len(), 10);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rebalance_between_two_members_loses_and_duplicates_nothing() {
    let cluster = MockCluster::new(1).unwrap();
    cluster.create_topic("feedback", 4, 1).unwrap();
    let brokers = cluster.bootstrap_servers();
    let out = tempfile::tempdir().unwrap();
    let member = |name: &str| {
        let member_out = out.path().join(name);
        std::fs::create_dir_all(&member_out).unwrap();
        // Both members write the same dataset; the files say which member they came from
        // only through their offsets.
        let file = TestPipeline {
            max_rows: 200,
            roll_age: "300ms",
            ..TestPipeline::parquet_only(&brokers, "feedback", "rebalance", out.path())
        }
        .write();
        let renamed = member_out.join("pipeline.yaml");
        std::fs::rename(file, &renamed).unwrap();
        sluice::pipeline::load(&renamed).unwrap()
    };
    let all = records(3, 6_000, 0.0);
    produce(&brokers, "feedback", all[..3_000].to_vec())
        .await
        .unwrap();

    let start = |pipeline: sluice::pipeline::Pipeline| {
        let stats = Arc::new(Stats::default());
        let shutdown = CancellationToken::new();
        let handle = tokio::spawn({
            let (stats, shutdown) = (stats.clone(), shutdown.clone());
            async move { runtime::run(&pipeline, shutdown, stats).await }
        });
        (stats, shutdown, handle)
    };
    let (a_stats, a_stop, a) = start(member("a"));
    assert!(
        eventually(Duration::from_secs(30), || a_stats.snapshot().records_in
            > 0)
        .await
    );
    // A second member joins while the first is mid-stream: partitions are revoked from A.
    let (b_stats, b_stop, b) = start(member("b"));
    produce(&brokers, "feedback", all[3_000..].to_vec())
        .await
        .unwrap();
    let dataset = out.path().join("feedback");
    let complete = eventually(Duration::from_secs(90), || {
        sluice::sink::parquet::read::count_rows(&dataset).unwrap_or(0) >= 6_000
    })
    .await;
    assert!(complete, "every record reached the dataset");
    // Offsets follow durability: once every row is in Parquet, commits catch up.
    let hw = high_watermarks(&brokers, "feedback", 4);
    assert!(
        eventually(Duration::from_secs(30), || committed(
            &brokers,
            "rebalance",
            "feedback",
            4
        ) == hw)
        .await,
        "committed offsets reach the end of every partition"
    );
    a_stop.cancel();
    let a_summary = a.await.unwrap().unwrap();
    b_stop.cancel();
    let b_summary = b.await.unwrap().unwrap();
    assert!(b_summary.records_in > 0, "the second member got partitions");
    assert!(a_summary.records_in > 0);
    let _ = (a_stats, b_stats);

    let rows = read_dataset(&dataset);
    let ids = count_strings(&rows, "id");
    assert_eq!(ids.len(), 6_000);
    let duplicates: Vec<_> = ids.iter().filter(|(_, &n)| n > 1).collect();
    assert!(
        duplicates.is_empty(),
        "duplicates: {:?}",
        &duplicates[..duplicates.len().min(5)]
    );
    for (partition, mut offsets) in offsets_by_partition(&rows) {
        offsets.sort_unstable();
        let expected: Vec<i64> = (0..offsets.len() as i64).collect();
        assert_eq!(
            offsets, expected,
            "partition {partition} is contiguous from 0"
        );
    }
    assert_eq!(
        committed(&brokers, "rebalance", "feedback", 4),
        high_watermarks(&brokers, "feedback", 4)
    );
}

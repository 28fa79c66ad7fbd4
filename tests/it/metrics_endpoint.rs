//! `/metrics` and `/health` of a running pipeline, scraped over HTTP while it runs on the
//! mock cluster: the counters must equal what the run actually did (records consumed,
//! rows per stage, model runs, dead letters, Parquet rows read back from the files), and
//! consumer lag and commits must show up.
//!
//! Uses `pipelines/maintenance-process.yaml` (window -> infer -> enrich -> Parquet + alerts)
//! and its model from `scripts/setup.sh`.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::mocking::MockCluster;
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use tokio_util::sync::CancellationToken;

use sluice::config::{MetricsConfig, PropertyValue};
use sluice::demo;
use sluice::demo::feeds::feedback::produce;
use sluice::runtime;
use sluice::sink::parquet::read::count_rows;
use sluice::telemetry::{status, Stats};

const PARTITIONS: i32 = 3;

fn repo(path: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(path)
}

/// `GET path` over HTTP/1.0; returns the status code and the body.
fn get(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut stream = TcpStream::connect(addr).expect("connect to the metrics endpoint");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    write!(stream, "GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let (head, body) = response.split_once("\r\n\r\n").expect("an HTTP response");
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("a status code");
    (status, body.to_owned())
}

/// The sum of every sample of `name` whose labels include all of `labels`.
fn sample(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let mut found = None;
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let Some((series, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let (series_name, series_labels) = match series.split_once('{') {
            Some((n, rest)) => (n, rest.trim_end_matches('}')),
            None => (series, ""),
        };
        if series_name != name {
            continue;
        }
        if labels
            .iter()
            .all(|(k, v)| series_labels.contains(&format!("{k}=\"{v}\"")))
        {
            *found.get_or_insert(0.0) += value.parse::<f64>().expect("a sample value");
        }
    }
    found
}

async fn wait_for(what: &str, timeout: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_match_the_records_processed() {
    let cluster = MockCluster::new(1).unwrap();
    cluster
        .create_topic("sensor-readings", PARTITIONS, 1)
        .unwrap();
    let brokers = cluster.bootstrap_servers();
    let out = tempfile::tempdir().unwrap();
    let mut pipeline = demo::load_pipeline(
        &repo("pipelines/maintenance-process.yaml"),
        &brokers,
        out.path(),
    )
    .unwrap();
    pipeline.config.metrics = Some(MetricsConfig {
        listen: "127.0.0.1:0".into(),
    });
    let sluice::config::SourceConfig::Kafka(kafka) = &mut pipeline.config.source;
    kafka
        .properties
        .insert("statistics.interval.ms".into(), PropertyValue::Integer(500));

    let stats = Arc::new(Stats::default());
    let shutdown = CancellationToken::new();
    // A failed assertion must still stop the pipeline (its source thread blocks the
    // runtime's shutdown until cancelled).
    let _stop_on_panic = shutdown.clone().drop_guard();
    let running = {
        let (pipeline, stats, shutdown) = (pipeline.clone(), stats.clone(), shutdown.clone());
        tokio::spawn(async move { runtime::run(&pipeline, shutdown, stats).await })
    };
    wait_for("the endpoint to bind", Duration::from_secs(60), || {
        stats.http_addr.get().is_some()
    })
    .await;
    let addr = *stats.http_addr.get().unwrap();
    wait_for("/health to say ready", Duration::from_secs(60), || {
        get(addr, "/health").0 == 200
    })
    .await;

    let readings = demo::process_readings(2, 6_000, chrono::Utc::now().timestamp_millis());
    let produced = produce(&brokers, "sensor-readings", readings)
        .await
        .unwrap();
    wait_for("every record processed", Duration::from_secs(120), || {
        let s = stats.snapshot();
        s.records_in == produced && s.parquet_rows == s.rows_decoded && s.batches > 0
    })
    .await;
    // Lag is reported from librdkafka's statistics (every 500 ms here): the records after
    // the group's committed offset. The window stage holds back commits over records of
    // windows still open, so it is not 0 here; it must equal high watermark - committed.
    let group = pipeline.group_id();
    let lag_now = || -> Vec<i64> {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &brokers)
            .set("group.id", &group)
            .create()
            .unwrap();
        let mut list = TopicPartitionList::new();
        for p in 0..PARTITIONS {
            list.add_partition("sensor-readings", p);
        }
        let committed = consumer
            .committed_offsets(list, Duration::from_secs(5))
            .unwrap();
        (0..PARTITIONS)
            .map(|p| {
                let (_, high) = consumer
                    .fetch_watermarks("sensor-readings", p, Duration::from_secs(5))
                    .unwrap();
                let at = match committed
                    .find_partition("sensor-readings", p)
                    .map(|e| e.offset())
                {
                    Some(Offset::Offset(o)) => o,
                    _ => 0,
                };
                high - at
            })
            .collect()
    };
    let mut text = String::new();
    wait_for(
        "lag as committed, and an auto commit",
        Duration::from_secs(30),
        || {
            text = get(addr, "/metrics").1;
            let expected = lag_now();
            let lag_right = (0..PARTITIONS).all(|p| {
                sample(
                    &text,
                    "sluice_consumer_lag",
                    &[("partition", &p.to_string())],
                ) == Some(expected[p as usize] as f64)
            });
            let committed = sample(
                &text,
                "sluice_commits_total",
                &[("mode", "auto"), ("outcome", "ok")],
            )
            .is_some_and(|n| n >= 1.0);
            lag_right && committed
        },
    )
    .await;
    let during = stats.snapshot();

    // `sluice status` reads the same endpoint.
    let scrape = status::fetch(&format!("http://{addr}")).await.unwrap();
    assert!(scrape.ready, "{}", scrape.health);
    assert_eq!(scrape.pipeline(), "maintenance-process");
    assert_eq!(scrape.sum("sluice_records_in", &[]), produced as f64);
    let screen = status::render(&scrape, None);
    assert!(
        screen.contains(&format!("records in {}", status::count(produced as f64))),
        "{screen}"
    );
    assert!(
        screen.contains("model stages[1].infer serves process-failure"),
        "{screen}"
    );

    shutdown.cancel();
    let end = running.await.unwrap().unwrap();
    assert_eq!(end.records_in, produced);

    let metric = |name: &str, labels: &[(&str, &str)]| {
        sample(&text, name, labels).unwrap_or_else(|| panic!("{name} {labels:?} missing:\n{text}"))
            as u64
    };
    let windows_written = count_rows(&out.path().join("windows")).unwrap();
    assert_eq!(
        metric(
            "sluice_records_in_total",
            &[("pipeline", "maintenance-process")]
        ),
        produced
    );
    assert_eq!(metric("sluice_batches_total", &[]), during.batches);
    assert_eq!(metric("sluice_batch_records_count", &[]), during.batches);
    assert_eq!(metric("sluice_batch_records_sum", &[]), produced);
    assert_eq!(metric("sluice_rows_out_total", &[]), end.rows_decoded);
    assert_eq!(
        metric("sluice_parquet_rows_total", &[]),
        windows_written + end.dead_letters
    );
    assert_eq!(end.rows_decoded, windows_written);
    assert_eq!(
        sample(&text, "sluice_dead_letters_total", &[]).unwrap_or(0.0) as u64,
        end.dead_letters
    );
    // Every decoded reading enters the window stage; every window it closes is inferred
    // once, in model runs that together cover exactly those rows.
    let window = [("stage", "stages[0].window")];
    let infer = [("stage", "stages[1].infer")];
    assert_eq!(
        metric("sluice_stage_rows_in_total", &window),
        produced - end.dead_letters
    );
    let windows = metric("sluice_stage_rows_out_total", &window);
    assert_eq!(metric("sluice_stage_rows_in_total", &infer), windows);
    assert_eq!(metric("sluice_inference_batch_rows_sum", &infer), windows);
    assert!(metric("sluice_inference_seconds_count", &infer) >= 1);
    assert_eq!(windows, windows_written);
    let current = std::fs::read_to_string(repo("models/process-failure/current")).unwrap();
    assert_eq!(
        metric(
            "sluice_model_info",
            &[
                ("stage", "stages[1].infer"),
                ("model", "process-failure"),
                ("version", current.trim())
            ]
        ),
        1
    );
    assert!(
        metric(
            "sluice_stage_seconds_count",
            &[("stage", "stages[2].enrich")]
        ) >= 1
    );
    assert!(
        text.contains("# TYPE sluice_commit_seconds histogram"),
        "{text}"
    );

    // The endpoint stops with the pipeline.
    assert!(
        TcpStream::connect(addr).is_err(),
        "the endpoint outlived the pipeline"
    );
}

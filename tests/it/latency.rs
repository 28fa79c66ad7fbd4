//! `sluice bench --rate`: latency and memory at a fixed offered rate. The sentiment
//! pipeline (real models) runs on the mock cluster for a few seconds; every record sent
//! must come back on the output topic and be measured, and both pictures must be drawn.
//! The numbers themselves are for benches/RESULTS.md, not asserted here.

use std::time::Duration;

use sluice::demo::bench::BrokerKind;
use sluice::demo::latency::{self, LatencyOptions};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_latency_bench_measures_every_output_and_draws_latency_and_memory() {
    let work = tempfile::tempdir().unwrap();
    let options = LatencyOptions {
        pipeline_file: sluice::demo::pipeline_path(std::path::Path::new("sentiment")),
        out: work.path().join("out"),
        rate: 40.0,
        duration: Duration::from_secs(6),
        warmup: Duration::from_secs(2),
        broker: BrokerKind::Mock,
        partitions: 2,
        plots: work.path().join("plots"),
    };
    let result = latency::run(&options)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    // 40 records/s for 6 s, give or take the last tick.
    assert!((230..=241).contains(&result.sent), "{result}");
    assert_eq!(result.delivered, result.sent, "{result}");
    assert!(
        result.measured > 0 && result.measured < result.sent,
        "{result}"
    );
    assert!(
        0.0 < result.p50_ms && result.p50_ms <= result.p99_ms && result.p99_ms <= result.max_ms,
        "{result}"
    );
    assert_eq!(result.max_wait_ms, 100.0, "sentiment.yaml's batch.max_wait");
    assert!(result.model_ms_per_batch > 0.0, "{result}");
    assert!(
        result.rss_max_mib > 10.0 && result.rss_slope_mib_per_min.is_finite(),
        "{result}"
    );
    for png in [&result.latency_png, &result.rss_png] {
        let bytes = std::fs::read(png).unwrap_or_else(|e| panic!("{png}: {e}"));
        assert_eq!(&bytes[1..4], b"PNG", "{png}");
    }
    assert!(result.latency_png.ends_with("latency-sentiment.png"));
    let line = serde_json::to_value(&result).unwrap();
    assert_eq!(line["bench"], "latency/sentiment");
}

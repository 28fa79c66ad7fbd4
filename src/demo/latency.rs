//! `sluice bench --rate N --duration D`: end-to-end latency and memory at a fixed offered
//! rate, for a pipeline with an output topic.
//!
//! A producer thread sends generated records at `rate` per second (each with its send
//! time as the Kafka timestamp); a reader of the pipeline's output topic takes each
//! output's key (the row's id) back to its send time: latency = produce time to the
//! output being readable on the output topic. The process's resident memory (RSS) is
//! sampled every second. After the warm-up, the bench reports latency p50/p99/max, the
//! bound the issue sets for p99 (the source's `max_wait` plus twice the model time one
//! micro-batch took, measured in the same run), the RSS trend (least-squares slope) and
//! maximum, and draws both over time as PNGs.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use super::bench::{git_rev, BenchBroker, BrokerKind};
use super::feeds::feedback::FeedbackGenerator;
use super::DemoError;
use crate::chart::{self, Line};
use crate::config::{SinkConfig, SourceConfig};
use crate::telemetry::Stats;

/// What to run and for how long.
#[derive(Debug, Clone)]
pub struct LatencyOptions {
    pub pipeline_file: PathBuf,
    pub out: PathBuf,
    /// Records offered per second.
    pub rate: f64,
    pub duration: Duration,
    /// Left out of the figures (models warming up, the group joining).
    pub warmup: Duration,
    pub broker: BrokerKind,
    pub partitions: i32,
    /// Where the two PNGs go (`latency-PIPELINE.png`, `rss-PIPELINE.png`).
    pub plots: PathBuf,
}

#[derive(Debug, Clone, Serialize)]
pub struct LatencyResult {
    /// `latency/PIPELINE`.
    pub bench: String,
    pub unix_time: i64,
    pub git_rev: Option<String>,
    pub profile: &'static str,
    pub broker: BrokerKind,
    pub partitions: i32,
    pub offered_per_s: f64,
    pub duration_s: f64,
    pub warmup_s: f64,
    pub sent: u64,
    /// Outputs read back (all of them: the bench waits for the last).
    pub delivered: u64,
    /// Outputs measured (sent after the warm-up).
    pub measured: u64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    /// The source's `batch.max_wait`.
    pub max_wait_ms: f64,
    /// Model time per source micro-batch (all infer stages' run time / micro-batches).
    pub model_ms_per_batch: f64,
    /// `max_wait_ms + 2 * model_ms_per_batch`: what p99 should stay under.
    pub p99_bound_ms: f64,
    pub p99_within_bound: bool,
    /// RSS at the end of the warm-up, its maximum after it, and its least-squares trend
    /// after it.
    pub rss_after_warmup_mib: f64,
    pub rss_max_mib: f64,
    pub rss_slope_mib_per_min: f64,
    pub inference: Vec<String>,
    pub host_cpus: usize,
    pub latency_png: String,
    pub rss_png: String,
}

impl std::fmt::Display for LatencyResult {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "offered                 {:.0} records/s for {:.0}s ({} sent, {} delivered, {} after the {:.0}s warm-up)",
            self.offered_per_s, self.duration_s, self.sent, self.delivered, self.measured, self.warmup_s
        )?;
        if !self.inference.is_empty() {
            writeln!(f, "inference               {}", self.inference.join(", "))?;
        }
        writeln!(
            f,
            "latency                 p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
            self.p50_ms, self.p99_ms, self.max_ms
        )?;
        writeln!(
            f,
            "p99 bound               {:.1} ms (max_wait {:.0} ms + 2 x model {:.1} ms per micro-batch): {}",
            self.p99_bound_ms,
            self.max_wait_ms,
            self.model_ms_per_batch,
            if self.p99_within_bound { "within" } else { "OVER" }
        )?;
        write!(
            f,
            "rss                     {:.1} MiB after warm-up, max {:.1} MiB, trend {:+.2} MiB/min",
            self.rss_after_warmup_mib, self.rss_max_mib, self.rss_slope_mib_per_min
        )
    }
}

/// Send times by record key, and what the reader measured.
#[derive(Default)]
struct Ledger {
    sent: HashMap<Vec<u8>, Instant>,
    /// (seconds since the start the record was sent at, latency in ms).
    latencies: Vec<(f64, f64)>,
    unmatched: u64,
}

pub async fn run(options: &LatencyOptions) -> Result<LatencyResult, DemoError> {
    let broker = BenchBroker::start(options.broker)?;
    let brokers = broker.address.clone();
    let mut pipeline = super::load_pipeline(&options.pipeline_file, &brokers, &options.out)?;
    super::clear_earlier_output(&pipeline)?;
    broker.prepare(&mut pipeline);
    let SourceConfig::Kafka(source) = &pipeline.config.source;
    let max_wait = source.batch.max_wait;
    if !matches!(
        super::Feed::of(&pipeline),
        super::Feed::Feedback | super::Feed::Reviews
    ) {
        return Err(DemoError::NoBenchFeed(pipeline.name().to_owned()));
    }
    let input = super::source_topic(&pipeline);
    let output = pipeline
        .config
        .sinks
        .iter()
        .find_map(|s| match s {
            SinkConfig::Kafka(k) => Some(k.topic.clone()),
            _ => None,
        })
        .ok_or_else(|| DemoError::NoOutputTopic(pipeline.name().to_owned()))?;
    for topic in [&input, &output] {
        broker.create_topic(topic, options.partitions).await?;
    }

    let stats = Arc::new(Stats::default());
    let shutdown = CancellationToken::new();
    let name = pipeline.name().to_owned();
    let running = {
        let (stats, shutdown) = (stats.clone(), shutdown.clone());
        tokio::spawn(async move { crate::runtime::run(&pipeline, shutdown, stats).await })
    };

    let start = Instant::now();
    let ledger = Arc::new(Mutex::new(Ledger::default()));
    let done = Arc::new(AtomicBool::new(false));
    let reader = {
        let (brokers, output, ledger, done) = (
            brokers.clone(),
            output.clone(),
            ledger.clone(),
            done.clone(),
        );
        let (partitions, settings) = (options.partitions, broker.consumer_settings());
        std::thread::spawn(move || {
            read_outputs(
                &brokers, settings, &output, partitions, start, &ledger, &done,
            )
        })
    };
    let rss = {
        let done = done.clone();
        std::thread::spawn(move || sample_rss(start, &done))
    };
    let sent = {
        let (brokers, input, ledger) = (brokers.clone(), input.clone(), ledger.clone());
        let (rate, duration) = (options.rate, options.duration);
        tokio::task::spawn_blocking(move || offer(&brokers, &input, rate, duration, &ledger))
            .await
            .map_err(crate::runtime::RunError::Task)??
    };
    // Every output read back, or the pipeline ended, or a minute past the last send.
    let drained = Instant::now() + Duration::from_secs(60);
    while ledger
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .latencies
        .len()
        < sent as usize
        && !running.is_finished()
        && Instant::now() < drained
    {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    done.store(true, Ordering::Relaxed);
    let rss = rss.join().unwrap_or_default();
    let _ = reader.join();
    shutdown.cancel();
    running.await.map_err(crate::runtime::RunError::Task)??;

    let ledger = std::mem::take(&mut *ledger.lock().unwrap_or_else(|p| p.into_inner()));
    if ledger.unmatched > 0 {
        tracing::warn!(
            unmatched = ledger.unmatched,
            "outputs whose key was never sent"
        );
    }
    let warmup = options.warmup.as_secs_f64();
    let mut measured: Vec<f64> = ledger
        .latencies
        .iter()
        .filter(|(at, _)| *at >= warmup)
        .map(|(_, ms)| *ms)
        .collect();
    measured.sort_by(f64::total_cmp);
    let quantile = |q: f64| -> f64 {
        if measured.is_empty() {
            return f64::NAN;
        }
        measured[((measured.len() - 1) as f64 * q).round() as usize]
    };
    let model_ms_per_batch =
        model_seconds(&stats, &name) * 1e3 / stats.snapshot().batches.max(1) as f64;
    let max_wait_ms = max_wait.as_secs_f64() * 1e3;
    let p99_bound_ms = max_wait_ms + 2.0 * model_ms_per_batch;
    let after: Vec<(f64, f64)> = rss.iter().copied().filter(|(t, _)| *t >= warmup).collect();
    let latency_png = options.plots.join(format!("latency-{name}.png"));
    let rss_png = options.plots.join(format!("rss-{name}.png"));
    draw(
        &latency_png,
        &rss_png,
        &name,
        options,
        &ledger.latencies,
        &rss,
    )?;
    Ok(LatencyResult {
        bench: format!("latency/{name}"),
        unix_time: chrono::Utc::now().timestamp(),
        git_rev: git_rev(),
        profile: if cfg!(debug_assertions) {
            "debug"
        } else {
            "release"
        },
        broker: options.broker,
        partitions: options.partitions,
        offered_per_s: options.rate,
        duration_s: options.duration.as_secs_f64(),
        warmup_s: warmup,
        sent,
        delivered: ledger.latencies.len() as u64,
        measured: measured.len() as u64,
        p50_ms: quantile(0.5),
        p99_ms: quantile(0.99),
        max_ms: measured.last().copied().unwrap_or(f64::NAN),
        max_wait_ms,
        model_ms_per_batch,
        p99_bound_ms,
        p99_within_bound: quantile(0.99) < p99_bound_ms,
        rss_after_warmup_mib: after.first().map_or(f64::NAN, |(_, m)| *m),
        rss_max_mib: after.iter().map(|(_, m)| *m).fold(f64::NAN, f64::max),
        rss_slope_mib_per_min: slope(&after) * 60.0,
        inference: stats.inference_devices(),
        host_cpus: std::thread::available_parallelism().map_or(1, |n| n.get()),
        latency_png: latency_png.display().to_string(),
        rss_png: rss_png.display().to_string(),
    })
}

/// Sends generated records at `rate` per second for `duration`; returns how many.
fn offer(
    brokers: &str,
    topic: &str,
    rate: f64,
    duration: Duration,
    ledger: &Mutex<Ledger>,
) -> Result<u64, DemoError> {
    let producer: ThreadedProducer<DefaultProducerContext> = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("linger.ms", "0")
        .set("queue.buffering.max.messages", "1000000")
        .create()?;
    let now_ms = chrono::Utc::now().timestamp_millis();
    let mut records = FeedbackGenerator::new(11, 0.0, now_ms, 10);
    let start = Instant::now();
    let mut sent = 0_u64;
    while start.elapsed() < duration {
        let due = (start.elapsed().as_secs_f64() * rate) as u64;
        while sent < due {
            let Some(record) = records.next() else { break };
            let at = Instant::now();
            ledger
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .sent
                .insert(record.key.clone().into_bytes(), at);
            let message = BaseRecord::to(topic)
                .key(&record.key)
                .payload(&record.payload)
                .timestamp(chrono::Utc::now().timestamp_millis());
            if let Err((e, _)) = producer.send(message) {
                return Err(DemoError::Kafka(e));
            }
            sent += 1;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    producer.flush(Duration::from_secs(30))?;
    Ok(sent)
}

/// Reads the output topic from its start; each message's key finds its send time.
fn read_outputs(
    brokers: &str,
    settings: &[(&str, &str)],
    topic: &str,
    partitions: i32,
    start: Instant,
    ledger: &Mutex<Ledger>,
    done: &AtomicBool,
) -> Result<(), DemoError> {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", brokers)
        .set("group.id", "sluice-bench-latency")
        .set("enable.auto.commit", "false")
        .set("fetch.wait.max.ms", "10");
    for (key, value) in settings {
        config.set(*key, *value);
    }
    let consumer: BaseConsumer = config.create()?;
    let mut assignment = TopicPartitionList::new();
    for p in 0..partitions {
        assignment.add_partition_offset(topic, p, Offset::Beginning)?;
    }
    consumer.assign(&assignment)?;
    while !done.load(Ordering::Relaxed) {
        let Some(Ok(message)) = consumer.poll(Duration::from_millis(50)) else {
            continue;
        };
        let now = Instant::now();
        let mut ledger = ledger.lock().unwrap_or_else(|p| p.into_inner());
        match message.key().and_then(|k| ledger.sent.remove(k)) {
            Some(sent) => {
                let at = sent.saturating_duration_since(start).as_secs_f64();
                let ms = now.saturating_duration_since(sent).as_secs_f64() * 1e3;
                ledger.latencies.push((at, ms));
            }
            None => ledger.unmatched += 1,
        }
    }
    Ok(())
}

/// (seconds since `start`, RSS in MiB) every second until `done`.
fn sample_rss(start: Instant, done: &AtomicBool) -> Vec<(f64, f64)> {
    let mut samples = Vec::new();
    let mut next = start;
    while !done.load(Ordering::Relaxed) {
        if Instant::now() >= next {
            if let Some(mib) = rss_mib() {
                samples.push((start.elapsed().as_secs_f64(), mib));
            }
            next += Duration::from_secs(1);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    samples
}

/// This process's resident set size, from `/proc/self/statm` (Linux).
fn rss_mib() -> Option<f64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: f64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    // SAFETY: sysconf only reads a configuration value.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as f64;
    Some(pages * page / (1024.0 * 1024.0))
}

/// Least-squares slope of `y` over `x` (0 for fewer than two points).
fn slope(points: &[(f64, f64)]) -> f64 {
    let n = points.len() as f64;
    if points.len() < 2 {
        return 0.0;
    }
    let (mx, my) = (
        points.iter().map(|p| p.0).sum::<f64>() / n,
        points.iter().map(|p| p.1).sum::<f64>() / n,
    );
    let (mut sxy, mut sxx) = (0.0, 0.0);
    for (x, y) in points {
        sxy += (x - mx) * (y - my);
        sxx += (x - mx) * (x - mx);
    }
    if sxx == 0.0 {
        0.0
    } else {
        sxy / sxx
    }
}

/// The model run time of every infer stage so far, in seconds (from the stage's
/// `sluice_inference_seconds` histograms).
fn model_seconds(stats: &Stats, pipeline: &str) -> f64 {
    let registry = stats.registry(pipeline);
    let mut text = String::new();
    if prometheus_client::encoding::text::encode(&mut text, &registry).is_err() {
        return 0.0;
    }
    crate::telemetry::status::Scrape::parse(&text, true, "")
        .map_or(0.0, |s| s.sum("sluice_inference_seconds_sum", &[]))
}

/// Per second of send time: p50, p99 and max latency; and RSS over time.
fn draw(
    latency_png: &Path,
    rss_png: &Path,
    name: &str,
    options: &LatencyOptions,
    latencies: &[(f64, f64)],
    rss: &[(f64, f64)],
) -> Result<(), DemoError> {
    let mut by_second: std::collections::BTreeMap<u64, Vec<f64>> = Default::default();
    for (at, ms) in latencies {
        by_second.entry(*at as u64).or_default().push(*ms);
    }
    let mut lines = [
        ("p50", chart_colour(0), Vec::new()),
        ("p99", chart_colour(1), Vec::new()),
        ("max", chart_colour(2), Vec::new()),
    ];
    for (second, mut values) in by_second {
        values.sort_by(f64::total_cmp);
        let at = |q: f64| values[((values.len() - 1) as f64 * q).round() as usize];
        let x = second as f64;
        lines[0].2.push((x, at(0.5)));
        lines[1].2.push((x, at(0.99)));
        lines[2].2.push((x, at(1.0)));
    }
    let write = |path: &Path, title: &str, y: &str, lines: Vec<Line>| {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        chart::lines(path, title, "seconds since start", y, &lines)
    };
    let title = format!(
        "{name}: end-to-end latency at {:.0} records/s (warm-up {:.0}s)",
        options.rate,
        options.warmup.as_secs_f64()
    );
    let latency_lines = lines
        .into_iter()
        .map(|(label, colour, points)| Line {
            name: label.to_owned(),
            points,
            colour,
        })
        .collect();
    write(latency_png, &title, "milliseconds", latency_lines).map_err(|source| {
        DemoError::Output {
            path: latency_png.to_owned(),
            source,
        }
    })?;
    let rss_line = vec![Line {
        name: "RSS".to_owned(),
        points: rss.to_vec(),
        colour: chart_colour(0),
    }];
    let title = format!("{name}: resident memory at {:.0} records/s", options.rate);
    write(rss_png, &title, "MiB", rss_line).map_err(|source| DemoError::Output {
        path: rss_png.to_owned(),
        source,
    })
}

fn chart_colour(index: usize) -> plotters::style::RGBColor {
    use plotters::style::{BLUE, GREEN, RED};
    [BLUE, RED, GREEN][index % 3]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rss_trend_is_the_least_squares_slope() {
        assert_eq!(slope(&[(0.0, 5.0)]), 0.0);
        let rising: Vec<(f64, f64)> = (0..10)
            .map(|i| (f64::from(i), 2.0 * f64::from(i) + 1.0))
            .collect();
        assert!((slope(&rising) - 2.0).abs() < 1e-12);
        let flat: Vec<(f64, f64)> = (0..10)
            .map(|i| (f64::from(i), 100.0 + f64::from(i % 2)))
            .collect();
        assert!(slope(&flat).abs() < 0.1);
        assert!(rss_mib().is_some_and(|m| m > 1.0));
    }
}

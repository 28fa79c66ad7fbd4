//! Helpers shared by the integration tests: pipeline files written for a test, reading
//! datasets and topics back, and committed offsets.
#![allow(dead_code)]

pub mod noida;
pub mod registry;
pub mod s3;
pub mod script;
pub mod tansu;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use arrow::array::{Array, AsArray, RecordBatch};
use arrow::datatypes::Int64Type;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

use sluice::pipeline::Pipeline;
use sluice::sink::parquet::read::{dataset_files, read_file};

pub const SCHEMA: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/schemas/customer_feedback.json"
);

/// `GET path` over HTTP/1.0: the status code and the body, or `None` when nothing
/// answers.
pub fn http_get(addr: &str, path: &str) -> Option<(u16, String)> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(addr).ok()?;
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .ok()?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let (head, body) = response.split_once("\r\n\r\n")?;
    let status = head.split_whitespace().nth(1)?.parse().ok()?;
    Some((status, body.to_owned()))
}

/// The value of an unlabelled-or-labelled metric line `NAME{...} VALUE` summed over its
/// series.
pub fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| l.starts_with(&format!("{name}{{")) || l.starts_with(&format!("{name} ")))
        .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
        .sum()
}

/// A free loopback port.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A record time an hour ago (ms since the epoch). Brokers that run as processes apply
/// time retention (noida-db: 7 days) to record timestamps, so records for them must be
/// recent, or they are deleted before the test reads them.
pub fn recent_ms() -> i64 {
    chrono::Utc::now().timestamp_millis() - 3_600_000
}

/// A path in the repository.
pub fn project(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

/// Knobs of a test pipeline file.
pub struct TestPipeline<'a> {
    pub brokers: &'a str,
    pub topic: &'a str,
    pub group: &'a str,
    pub out: &'a Path,
    pub output_topic: Option<&'a str>,
    pub dead_letter_topic: Option<&'a str>,
    pub max_rows: usize,
    pub roll_age: &'a str,
    /// More librdkafka consumer properties, e.g. `group.instance.id`.
    pub properties: &'a [(&'a str, &'a str)],
}

impl<'a> TestPipeline<'a> {
    /// `topic` to Parquet under `out` only (no output or dead-letter topic), micro-batches
    /// of 100 rows, files rolled every second.
    pub fn parquet_only(brokers: &'a str, topic: &'a str, group: &'a str, out: &'a Path) -> Self {
        TestPipeline {
            brokers,
            topic,
            group,
            out,
            output_topic: None,
            dead_letter_topic: None,
            max_rows: 100,
            roll_age: "1s",
            properties: &[],
        }
    }

    /// Writes the pipeline file under `out` and returns its path.
    pub fn write(&self) -> PathBuf {
        let mut sinks = format!(
            "  - parquet:\n      path: {out}/feedback\n      partition_by: [date(_timestamp)]\n      roll:\n        max_age: {age}\n",
            out = self.out.display(),
            age = self.roll_age
        );
        if let Some(topic) = self.output_topic {
            sinks += &format!("  - kafka:\n      topic: {topic}\n      columns: [id, text, rating, _partition, _offset]\n      key: id\n");
        }
        let mut dead_letter = format!(
            "  parquet:\n    path: {out}/dead_letters\n    roll:\n      max_age: {age}\n",
            out = self.out.display(),
            age = self.roll_age
        );
        if let Some(topic) = self.dead_letter_topic {
            dead_letter += &format!("  kafka:\n    topic: {topic}\n");
        }
        let extra: String = self
            .properties
            .iter()
            .map(|(k, v)| format!("      {k}: {v}\n"))
            .collect();
        let text = format!(
            "name: test\nsource:\n  kafka:\n    brokers: {brokers}\n    topics: [{topic}]\n    group_id: {group}\n    batch:\n      max_rows: {max_rows}\n      max_wait: 100ms\n    properties:\n      session.timeout.ms: 6000\n      heartbeat.interval.ms: 500\n      auto.commit.interval.ms: 200\n{extra}decode:\n  schema: {SCHEMA}\n  max_record_bytes: 16 KiB\nsinks:\n{sinks}dead_letter:\n{dead_letter}",
            brokers = self.brokers,
            topic = self.topic,
            group = self.group,
            max_rows = self.max_rows,
        );
        std::fs::create_dir_all(self.out).unwrap();
        let path = self.out.join(format!("{}.yaml", self.group));
        std::fs::write(&path, text).unwrap();
        path
    }

    /// [`Self::write`], with `source` (YAML lines, indented for `source.kafka`) added to
    /// the source and `shared` as the top-level `kafka.properties`.
    pub fn write_with(&self, source: &str, shared: &[(&str, &str)]) -> PathBuf {
        let file = self.write();
        patch(&file, "    batch:", &format!("{source}    batch:"));
        if !shared.is_empty() {
            let mut text = std::fs::read_to_string(&file).unwrap();
            text.push_str("kafka:\n  properties:\n");
            for (key, value) in shared {
                text.push_str(&format!("    {key}: {value}\n"));
            }
            std::fs::write(&file, text).unwrap();
        }
        file
    }

    pub fn load(&self) -> Pipeline {
        sluice::pipeline::load(&self.write()).unwrap_or_else(|e| panic!("{e}"))
    }
}

/// Replaces `from` (which must be there) with `to` in `file`.
pub fn patch(file: &Path, from: &str, to: &str) {
    let text = std::fs::read_to_string(file).unwrap();
    assert!(text.contains(from), "{} has no `{from}`", file.display());
    std::fs::write(file, text.replacen(from, to, 1)).unwrap();
}

/// Runs `pipeline` on the mock cluster until it has consumed `produced` records (two
/// minutes at most), then stops it cleanly; the run's counters.
pub async fn consume_all(pipeline: Pipeline, produced: u64) -> sluice::telemetry::StatsSnapshot {
    sluice::demo::run_until_consumed(
        pipeline,
        produced,
        Duration::from_secs(120),
        Default::default(),
    )
    .await
    .unwrap()
    .0
}

/// Every row of every visible file of a dataset.
pub fn read_dataset(root: &Path) -> Vec<RecordBatch> {
    dataset_files(root)
        .unwrap()
        .iter()
        .flat_map(|f| read_file(f).unwrap_or_else(|e| panic!("{}: {e}", f.display())))
        .collect()
}

/// `(column value as text, occurrences)` of a string column over a dataset.
pub fn count_strings(batches: &[RecordBatch], column: &str) -> HashMap<String, usize> {
    let mut counts = HashMap::new();
    for batch in batches {
        let values = batch.column_by_name(column).unwrap().as_string::<i32>();
        for value in values.iter().flatten() {
            *counts.entry(value.to_owned()).or_default() += 1;
        }
    }
    counts
}

/// `_offset`s per `_partition` over a dataset.
pub fn offsets_by_partition(batches: &[RecordBatch]) -> HashMap<i32, Vec<i64>> {
    let mut offsets: HashMap<i32, Vec<i64>> = HashMap::new();
    for batch in batches {
        let partitions = batch
            .column_by_name("_partition")
            .unwrap()
            .as_primitive::<arrow::datatypes::Int32Type>();
        let values = batch
            .column_by_name("_offset")
            .unwrap()
            .as_primitive::<Int64Type>();
        for i in 0..batch.num_rows() {
            offsets
                .entry(partitions.value(i))
                .or_default()
                .push(values.value(i));
        }
    }
    offsets
}

/// Files whose name says they are temp files, anywhere under `root`.
pub fn temp_files(root: &Path) -> Vec<PathBuf> {
    walkdir::WalkDir::new(root)
        .into_iter()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().ends_with(".tmp"))
        .map(|e| e.into_path())
        .collect()
}

/// Committed offsets of `group` on `topic`'s partitions.
pub fn committed(brokers: &str, group: &str, topic: &str, partitions: i32) -> Vec<i64> {
    committed_with(brokers, &[], group, topic, partitions)
}

/// A client config for `brokers` with more `properties` (TLS, SASL).
pub fn client_with(brokers: &str, properties: &[(&str, &str)]) -> ClientConfig {
    let mut config = ClientConfig::new();
    config.set("bootstrap.servers", brokers);
    for (key, value) in properties {
        config.set(*key, *value);
    }
    config
}

/// [`committed`] through a client with `properties`.
pub fn committed_with(
    brokers: &str,
    properties: &[(&str, &str)],
    group: &str,
    topic: &str,
    partitions: i32,
) -> Vec<i64> {
    let consumer: BaseConsumer = client_with(brokers, properties)
        .set("group.id", group)
        .create()
        .unwrap();
    let mut list = TopicPartitionList::new();
    for p in 0..partitions {
        list.add_partition(topic, p);
    }
    let committed = consumer
        .committed_offsets(list, Duration::from_secs(10))
        .unwrap();
    (0..partitions)
        .map(
            |p| match committed.find_partition(topic, p).map(|e| e.offset()) {
                Some(Offset::Offset(o)) => o,
                _ => -1,
            },
        )
        .collect()
}

/// High watermarks of `topic`'s partitions.
pub fn high_watermarks(brokers: &str, topic: &str, partitions: i32) -> Vec<i64> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()
        .unwrap();
    (0..partitions)
        .map(|p| {
            consumer
                .fetch_watermarks(topic, p, Duration::from_secs(10))
                .unwrap()
                .1
        })
        .collect()
}

/// A message read back from a topic.
pub struct ReadMessage {
    pub key: Option<Vec<u8>>,
    pub payload: Vec<u8>,
    pub headers: HashMap<String, String>,
}

/// Reads `expected` messages from all partitions of `topic` (or stops after `timeout`).
pub fn read_topic(
    brokers: &str,
    topic: &str,
    expected: usize,
    timeout: Duration,
) -> Vec<ReadMessage> {
    read_topic_with(brokers, &[], topic, expected, timeout)
}

/// [`read_topic`] through a client with `properties`.
pub fn read_topic_with(
    brokers: &str,
    properties: &[(&str, &str)],
    topic: &str,
    expected: usize,
    timeout: Duration,
) -> Vec<ReadMessage> {
    read_messages(brokers, properties, topic, timeout, |read, _| {
        read >= expected
    })
}

/// Every message of `topic` a client with `properties` sees (e.g. `isolation.level`),
/// up to the end of each partition (for `read_committed`, its last stable offset).
/// Panics when the end is not reached within `timeout`.
pub fn read_topic_to_end(
    brokers: &str,
    properties: &[(&str, &str)],
    topic: &str,
    timeout: Duration,
) -> Vec<ReadMessage> {
    let mut reached = false;
    let messages = read_messages(brokers, properties, topic, timeout, |_, at_end| {
        reached = at_end;
        at_end
    });
    assert!(
        reached,
        "the end of `{topic}` was not reached in {timeout:?}"
    );
    messages
}

/// Reads `topic` from the beginning of every partition until `done(messages read, every
/// partition at its end)` or `timeout`.
fn read_messages(
    brokers: &str,
    properties: &[(&str, &str)],
    topic: &str,
    timeout: Duration,
    mut done: impl FnMut(usize, bool) -> bool,
) -> Vec<ReadMessage> {
    let consumer: BaseConsumer = client_with(brokers, properties)
        .set("group.id", "test-reader")
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "true")
        .create()
        .unwrap();
    let metadata = consumer
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .unwrap();
    let partitions = metadata.topics()[0].partitions().len() as i32;
    let mut list = TopicPartitionList::new();
    for p in 0..partitions {
        list.add_partition_offset(topic, p, Offset::Beginning)
            .unwrap();
    }
    consumer.assign(&list).unwrap();
    let deadline = Instant::now() + timeout;
    let mut messages = Vec::new();
    let mut at_end = std::collections::HashSet::new();
    while !done(messages.len(), at_end.len() == partitions as usize) && Instant::now() < deadline {
        match consumer.poll(Duration::from_millis(100)) {
            Some(Err(rdkafka::error::KafkaError::PartitionEOF(p))) => {
                at_end.insert(p);
            }
            Some(Ok(m)) => {
                at_end.remove(&m.partition());
                let headers = m
                    .headers()
                    .map(|h| {
                        h.iter()
                            .map(|h| {
                                (
                                    h.key.to_owned(),
                                    String::from_utf8_lossy(h.value.unwrap_or_default())
                                        .into_owned(),
                                )
                            })
                            .collect()
                    })
                    .unwrap_or_default();
                messages.push(ReadMessage {
                    key: m.key().map(<[u8]>::to_vec),
                    payload: m.payload().unwrap_or_default().to_vec(),
                    headers,
                });
            }
            _ => {}
        }
    }
    messages
}

/// Waits until `check` is true or `timeout` passes; returns whether it became true.
pub async fn eventually(timeout: Duration, mut check: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if check() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    check()
}

/// A column's values as i64 (for checks of numeric fields).
pub fn int_column(batch: &RecordBatch, column: &str) -> Vec<Option<i64>> {
    let array = arrow::compute::cast(
        batch.column_by_name(column).unwrap(),
        &arrow::datatypes::DataType::Int64,
    )
    .unwrap();
    let array = array.as_primitive::<Int64Type>();
    (0..array.len())
        .map(|i| array.is_valid(i).then(|| array.value(i)))
        .collect()
}

/// A pipeline running on a tokio task, with its counters and its shutdown token.
pub struct Running {
    pub stats: std::sync::Arc<sluice::telemetry::Stats>,
    pub shutdown: tokio_util::sync::CancellationToken,
    /// Cancels the run when dropped: a test that fails an assertion still stops its
    /// pipeline (whose source thread would otherwise keep the runtime from shutting down).
    pub stop_on_panic: StopOnDrop,
    pub handle: tokio::task::JoinHandle<
        Result<sluice::telemetry::StatsSnapshot, sluice::runtime::RunError>,
    >,
}

/// Cancels a run when dropped; while a failed test unwinds, also waits (up to 30 s) for
/// the run to end, so it stops while the test's broker still exists: dropped first, the
/// broker would leave the source's final synchronous commit waiting for ever, and the
/// test runtime's shutdown with it (a failure would hang CI instead of failing).
pub struct StopOnDrop {
    shutdown: tokio_util::sync::CancellationToken,
    finished: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.shutdown.cancel();
        if !std::thread::panicking() {
            return;
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        while !self.finished.load(std::sync::atomic::Ordering::Acquire) && Instant::now() < deadline
        {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// Starts `pipeline` (`runtime::run`) on a task.
pub fn spawn_pipeline(pipeline: Pipeline) -> Running {
    let stats = std::sync::Arc::new(sluice::telemetry::Stats::default());
    let shutdown = tokio_util::sync::CancellationToken::new();
    let finished = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let handle = tokio::spawn({
        let (stats, shutdown, finished) = (stats.clone(), shutdown.clone(), finished.clone());
        async move {
            let result = sluice::runtime::run(&pipeline, shutdown, stats).await;
            finished.store(true, std::sync::atomic::Ordering::Release);
            result
        }
    });
    Running {
        stats,
        stop_on_panic: StopOnDrop {
            shutdown: shutdown.clone(),
            finished,
        },
        shutdown,
        handle,
    }
}

/// Runs a Python script (`python3 -c`), fails the test with its stderr if it fails, and
/// returns what it printed, trimmed.
/// `error` and each of its causes, `: `-separated.
pub fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut cause = error.source();
    while let Some(e) = cause {
        text += &format!(": {e}");
        cause = e.source();
    }
    text
}

pub fn python(script: &str) -> String {
    let out = std::process::Command::new("python3")
        .args(["-c", script])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "python: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// A labelled tabular dataset as Parquet bytes: two features whose means depend on the
/// class (`a`, `b`, `c`), one row per id.
pub fn tabular_parquet(ids: std::ops::Range<usize>) -> Vec<u8> {
    use arrow::array::{Float64Array, StringArray, TimestampMillisecondArray};
    use arrow::datatypes::{DataType, Field, Schema, TimeUnit};
    use std::sync::Arc;
    let classes = ["a", "b", "c"];
    let now = chrono::Utc::now().timestamp_millis();
    let ids: Vec<usize> = ids.collect();
    let noise = |i: usize| ((i * 7919) % 100) as f64 / 100.0;
    let schema = Arc::new(Schema::new(vec![
        Field::new("id", DataType::Utf8, false),
        Field::new(
            "_timestamp",
            DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into())),
            false,
        ),
        Field::new("f1", DataType::Float64, false),
        Field::new("f2", DataType::Float64, false),
        Field::new("label", DataType::Utf8, false),
    ]));
    let batch = arrow::array::RecordBatch::try_new(
        schema.clone(),
        vec![
            Arc::new(StringArray::from_iter_values(
                ids.iter().map(|i| format!("r{i}")),
            )),
            Arc::new(
                TimestampMillisecondArray::from_iter_values(ids.iter().map(|_| now))
                    .with_timezone("UTC"),
            ),
            Arc::new(Float64Array::from_iter_values(
                ids.iter().map(|&i| (i % 3) as f64 * 4.0 + noise(i)),
            )),
            Arc::new(Float64Array::from_iter_values(
                ids.iter().map(|&i| -((i % 3) as f64) * 2.0 + noise(i + 1)),
            )),
            Arc::new(StringArray::from_iter_values(
                ids.iter().map(|&i| classes[i % 3]),
            )),
        ],
    )
    .unwrap();
    let mut bytes = Vec::new();
    let mut writer = parquet::arrow::ArrowWriter::try_new(&mut bytes, schema, None).unwrap();
    writer.write(&batch).unwrap();
    writer.close().unwrap();
    bytes
}

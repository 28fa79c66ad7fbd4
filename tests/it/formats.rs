//! Avro in the Confluent wire format: records produced by confluent-kafka's
//! `AvroSerializer` with its `SchemaRegistryClient` against the test registry
//! (`common::registry`), consumed by sluice from the mock cluster into Parquet. Every Avro
//! type the declared schema has arrives with its value; writers moving between schema
//! versions decode into the declared schema; an incompatible writer's records become dead
//! letters naming the schema id; a registry that goes away pauses the stream without dead
//! letters, and it resumes when the registry is back.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use arrow::array::{Array, AsArray, RecordBatch};
use arrow::datatypes::{DataType, Float64Type, Int64Type};
use rdkafka::mocking::MockCluster;

use crate::common::registry::Registry;
use crate::common::script::Script;
use crate::common::{eventually, read_dataset, spawn_pipeline, Running};

const HERE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/it/avro");

/// The confluent-kafka producer process (`tests/it/avro/produce.py`), driven by commands.
struct AvroProducer(Script);

impl AvroProducer {
    fn start(brokers: &str, topic: &str, registry: &str) -> AvroProducer {
        AvroProducer(Script::start(
            &format!("{HERE}/produce.py"),
            &[brokers, topic, registry],
        ))
    }

    /// `produce` or `register` records `start..start + count` of `kind` with `schema`.
    fn run(&mut self, command: &str, schema: &str, kind: &str, start: usize, count: usize) {
        self.0
            .run(&format!("{command} {HERE}/{schema} {kind} {start} {count}"));
    }
}

/// A pipeline reading Avro from `topic` into `out/rows` (dead letters in `out/dead`).
fn avro_pipeline(dir: &Path, brokers: &str, topic: &str, schema: &str, registry: &str) -> PathBuf {
    let file = dir.join("avro.yaml");
    std::fs::write(
        &file,
        format!(
            "name: avro-{topic}\nsource:\n  kafka:\n    brokers: {brokers}\n    topics: [{topic}]\n    batch:\n      max_rows: 500\n      max_wait: 100ms\ndecode:\n  format: avro\n  schema: {HERE}/{schema}\n  schema_registry:\n    url: {registry}\n    timeout: 2s\nsinks:\n  - parquet:\n      path: {out}/rows\n      roll:\n        max_age: 1s\ndead_letter:\n  parquet:\n    path: {out}/dead\n    roll:\n      max_age: 1s\n",
            out = dir.display()
        ),
    )
    .unwrap();
    file
}

fn start(dir: &Path, brokers: &str, topic: &str, schema: &str, registry: &str) -> Running {
    let file = avro_pipeline(dir, brokers, topic, schema, registry);
    spawn_pipeline(sluice::pipeline::load(&file).unwrap_or_else(|e| panic!("{e}")))
}

fn rows(batches: &[RecordBatch]) -> usize {
    batches.iter().map(RecordBatch::num_rows).sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_avro_type_from_the_confluent_serializer_arrives_with_its_value() {
    let registry = Registry::start();
    let cluster = MockCluster::new(1).unwrap();
    cluster.create_topic("orders", 2, 1).unwrap();
    let brokers = cluster.bootstrap_servers();
    let out = tempfile::tempdir().unwrap();
    let Running {
        stats,
        shutdown,
        handle,
        stop_on_panic: _stop_on_panic,
    } = start(out.path(), &brokers, "orders", "order.avsc", &registry.url);
    let mut producer = AvroProducer::start(&brokers, "orders", &registry.url);
    producer.run("produce", "order.avsc", "order", 0, 120);
    assert!(
        eventually(Duration::from_secs(60), || stats.snapshot().parquet_rows
            == 120)
        .await
    );
    shutdown.cancel();
    let summary = handle.await.unwrap().unwrap();
    assert_eq!(summary.dead_letters, 0);

    let batches = read_dataset(&out.path().join("rows"));
    assert_eq!(rows(&batches), 120);
    let mut seen = 0;
    for batch in &batches {
        let column = |name: &str| batch.column_by_name(name).unwrap().clone();
        let ids = column("id");
        let ids = ids.as_string::<i32>();
        let amount = column("amount");
        let DataType::Decimal128(10, 2) = amount.data_type() else {
            panic!("decimal(10, 2) expected, found {}", amount.data_type());
        };
        let amount = amount.as_primitive::<arrow::datatypes::Decimal128Type>();
        let placed = column("placed_at");
        assert!(
            matches!(placed.data_type(), DataType::Timestamp(_, Some(_))),
            "{}",
            placed.data_type()
        );
        let placed = arrow::compute::cast(
            &placed,
            &DataType::Timestamp(arrow::datatypes::TimeUnit::Millisecond, None),
        )
        .unwrap();
        let placed = placed.as_primitive::<arrow::datatypes::TimestampMillisecondType>();
        let status = arrow::compute::cast(&column("status"), &DataType::Utf8).unwrap();
        let status = status.as_string::<i32>();
        let tags = column("tags");
        let tags = tags.as_list::<i32>();
        let attributes = column("attributes");
        let attributes = attributes.as_map();
        let customer = column("customer");
        let customer = customer.as_struct();
        let names = customer
            .column_by_name("name")
            .unwrap()
            .as_string::<i32>()
            .clone();
        let vip = customer.column_by_name("vip").unwrap().as_boolean().clone();
        let coupon = column("coupon");
        let coupon = coupon.as_string::<i32>();
        let weight = column("weight");
        let weight = weight.as_primitive::<Float64Type>();
        for row in 0..batch.num_rows() {
            let i: i64 = ids.value(row)[1..].parse().unwrap();
            assert_eq!(amount.value(row), i128::from(i * 101), "amount of o{i}");
            assert_eq!(placed.value(row), 1_700_000_000_000 + i * 1000);
            assert_eq!(
                status.value(row),
                ["NEW", "PAID", "SHIPPED"][(i % 3) as usize]
            );
            let row_tags = tags.value(row);
            let row_tags: Vec<&str> = row_tags.as_string::<i32>().iter().flatten().collect();
            let expected: Vec<String> = (0..i % 3).map(|j| format!("t{j}")).collect();
            assert_eq!(row_tags, expected);
            let entries = attributes.value(row);
            let keys = entries.column(0).as_string::<i32>();
            let values = entries.column(1).as_primitive::<Int64Type>();
            let mut pairs: Vec<(&str, i64)> = (0..entries.len())
                .map(|j| (keys.value(j), values.value(j)))
                .collect();
            pairs.sort();
            assert_eq!(pairs, [("double", 2 * i), ("qty", i)]);
            assert_eq!(names.value(row), format!("c{}", i % 5));
            assert_eq!(vip.value(row), i % 2 == 0);
            if i % 4 == 0 {
                assert_eq!(coupon.value(row), format!("C{i}"));
            } else {
                assert!(coupon.is_null(row));
            }
            assert_eq!(weight.value(row), i as f64 * 0.5);
            seen += 1;
        }
    }
    assert_eq!(seen, 120);

    // The schema the serializer registered, pulled back as a `decode.schema` file.
    let pulled = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args([
            "schema",
            "pull",
            "orders-value",
            "--registry",
            &registry.url,
        ])
        .output()
        .unwrap();
    assert!(
        pulled.status.success(),
        "{}",
        String::from_utf8_lossy(&pulled.stderr)
    );
    let pulled: serde_json::Value = serde_json::from_slice(&pulled.stdout).unwrap();
    let declared: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(format!("{HERE}/order.avsc")).unwrap())
            .unwrap();
    assert_eq!(pulled["name"], declared["name"]);
    assert_eq!(pulled["fields"].as_array().unwrap().len(), 9);
    let missing = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["schema", "pull", "nope-value", "--registry", &registry.url])
        .output()
        .unwrap();
    assert!(!missing.status.success());
    assert!(
        String::from_utf8_lossy(&missing.stderr)
            .contains("subject `nope-value` version latest is not in the schema registry"),
        "{}",
        String::from_utf8_lossy(&missing.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writers_moving_between_versions_decode_and_an_incompatible_one_is_dead_lettered() {
    let registry = Registry::start();
    let cluster = MockCluster::new(1).unwrap();
    cluster.create_topic("feedback", 1, 1).unwrap();
    let brokers = cluster.bootstrap_servers();
    let out = tempfile::tempdir().unwrap();
    let Running {
        stats,
        shutdown,
        handle,
        stop_on_panic: _stop_on_panic,
    } = start(
        out.path(),
        &brokers,
        "feedback",
        "feedback-reader.avsc",
        &registry.url,
    );
    let mut producer = AvroProducer::start(&brokers, "feedback", &registry.url);
    producer.run("produce", "feedback-v1.avsc", "v1", 0, 40);
    producer.run("produce", "feedback-v2.avsc", "v2", 40, 40);
    producer.run(
        "produce",
        "feedback-incompatible.avsc",
        "incompatible",
        80,
        5,
    );
    producer.run("produce", "feedback-v1.avsc", "v1", 85, 15);
    assert!(
        eventually(Duration::from_secs(60), || {
            let s = stats.snapshot();
            s.parquet_rows == 100 && s.dead_letters == 5
        })
        .await,
        "{:?}",
        stats.snapshot()
    );
    shutdown.cancel();
    handle.await.unwrap().unwrap();
    assert_eq!(registry.len(), 3);

    let batches = read_dataset(&out.path().join("rows"));
    assert_eq!(rows(&batches), 95);
    for batch in &batches {
        assert_eq!(
            batch.num_columns(),
            3 + 4,
            "the declared columns and provenance"
        );
        let ids = batch
            .column_by_name("id")
            .unwrap()
            .as_string::<i32>()
            .clone();
        let ratings = batch
            .column_by_name("rating")
            .unwrap()
            .as_primitive::<Int64Type>()
            .clone();
        let notes = batch
            .column_by_name("note")
            .unwrap()
            .as_string::<i32>()
            .clone();
        for row in 0..batch.num_rows() {
            let i: i64 = ids.value(row)[1..].parse().unwrap();
            assert_eq!(ratings.value(row), i % 5 + 1, "promoted int -> long");
            if (40..80).contains(&i) {
                assert_eq!(notes.value(row), format!("n{i}"));
            } else {
                assert!(notes.is_null(row), "v1 rows take the default");
            }
        }
    }
    let dead = read_dataset(&out.path().join("dead"));
    assert_eq!(rows(&dead), 5);
    for batch in &dead {
        let stages = batch
            .column_by_name("stage")
            .unwrap()
            .as_string::<i32>()
            .clone();
        let reasons = batch
            .column_by_name("reason")
            .unwrap()
            .as_string::<i32>()
            .clone();
        for row in 0..batch.num_rows() {
            assert_eq!(stages.value(row), "decode");
            assert!(
                reasons
                    .value(row)
                    .contains("writer schema id 3 cannot be read"),
                "{}",
                reasons.value(row)
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_registry_that_goes_away_pauses_the_stream_and_it_resumes_without_dead_letters() {
    let registry = Registry::start();
    let cluster = MockCluster::new(1).unwrap();
    cluster.create_topic("feedback", 1, 1).unwrap();
    let brokers = cluster.bootstrap_servers();
    let out = tempfile::tempdir().unwrap();
    let Running {
        stats,
        shutdown,
        handle,
        stop_on_panic: _stop_on_panic,
    } = start(
        out.path(),
        &brokers,
        "feedback",
        "feedback-reader.avsc",
        &registry.url,
    );
    let mut producer = AvroProducer::start(&brokers, "feedback", &registry.url);
    producer.run("produce", "feedback-v1.avsc", "v1", 0, 50);
    assert!(
        eventually(Duration::from_secs(60), || stats.snapshot().parquet_rows
            == 50)
        .await
    );

    // The producer learns v2's id; then the registry goes away, and v2 records arrive.
    producer.run("register", "feedback-v2.avsc", "v2", 50, 1);
    registry.set_available(false);
    producer.run("produce", "feedback-v2.avsc", "v2", 50, 50);
    assert!(
        eventually(Duration::from_secs(30), || stats.snapshot().records_in
            == 100)
        .await,
        "the source consumed the v2 records"
    );
    let paused = stats.snapshot();
    assert_eq!(
        (paused.rows_decoded, paused.dead_letters),
        (50, 0),
        "waiting for the registry: nothing decoded, nothing dead-lettered"
    );
    assert!(
        eventually(Duration::from_secs(10), || stats
            .readiness
            .not_ready()
            .is_some_and(|why| why.contains(
                "waiting for the schema registry (writer schema id 2)"
            )))
        .await,
        "/health says why: {:?}",
        stats.readiness.not_ready()
    );

    registry.set_available(true);
    assert!(
        eventually(Duration::from_secs(60), || stats.snapshot().parquet_rows
            == 100)
        .await,
        "{:?}",
        stats.snapshot()
    );
    assert_eq!(stats.readiness.not_ready(), None, "ready again");
    shutdown.cancel();
    let summary = handle.await.unwrap().unwrap();
    assert_eq!(summary.dead_letters, 0);
    assert_eq!(rows(&read_dataset(&out.path().join("rows"))), 100);
}

/// A pipeline reading JSON feedback from `feedback` into a `feedback-avro` topic as Avro
/// (`sink` is the rest of the kafka sink block, indented six spaces).
fn json_to_avro_pipeline(dir: &Path, brokers: &str, registry: &str, sink: &str) -> PathBuf {
    let file = dir.join("to-avro.yaml");
    std::fs::write(
        &file,
        format!(
            "name: to-avro\nsource:\n  kafka:\n    brokers: {brokers}\n    topics: [feedback]\n    batch:\n      max_rows: 200\n      max_wait: 100ms\ndecode:\n  schema: {root}/schemas/customer_feedback.json\nsinks:\n  - kafka:\n      topic: feedback-avro\n      format: avro\n      key: customer_id\n      columns: [id, customer_id, rating, text, _timestamp]\n      schema_registry:\n        url: {registry}\n{sink}dead_letter:\n  parquet:\n    path: {out}/dead\n",
            root = env!("CARGO_MANIFEST_DIR"),
            out = dir.display()
        ),
    )
    .unwrap();
    file
}

fn read_avro(brokers: &str, topic: &str, registry: &str, count: usize) -> Vec<serde_json::Value> {
    let out = Command::new("python3")
        .arg(format!("{HERE}/consume.py"))
        .args([brokers, topic, registry, &count.to_string()])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rows_written_as_avro_are_read_back_by_the_confluent_deserializer() {
    use sluice::demo::feeds::feedback::{produce, FeedbackGenerator};
    let registry = Registry::start();
    let cluster = MockCluster::new(1).unwrap();
    cluster.create_topic("feedback", 2, 1).unwrap();
    cluster.create_topic("feedback-avro", 2, 1).unwrap();
    let brokers = cluster.bootstrap_servers();
    let out = tempfile::tempdir().unwrap();
    let file = json_to_avro_pipeline(
        out.path(),
        &brokers,
        &registry.url,
        "      record_name: com.example.FeedbackOut\n",
    );
    let pipeline = sluice::pipeline::load(&file).unwrap_or_else(|e| panic!("{e}"));
    let Running {
        stats,
        shutdown,
        handle,
        stop_on_panic: _stop_on_panic,
    } = spawn_pipeline(pipeline);
    let sent: Vec<_> = FeedbackGenerator::new(5, 0.0, 1_795_305_600_000, 1_000)
        .take(300)
        .collect();
    produce(&brokers, "feedback", sent.clone()).await.unwrap();
    assert!(
        eventually(Duration::from_secs(60), || stats.snapshot().kafka_messages
            == 300)
        .await
    );
    shutdown.cancel();
    handle.await.unwrap().unwrap();

    let read = read_avro(&brokers, "feedback-avro", &registry.url, 300);
    assert_eq!(read.len(), 300);
    assert_eq!(registry.len(), 1, "one schema, registered once");
    let by_id: std::collections::HashMap<String, &serde_json::Value> = read
        .iter()
        .map(|r| (r["id"].as_str().unwrap().to_owned(), r))
        .collect();
    for record in &sent {
        let json: serde_json::Value = serde_json::from_slice(&record.payload).unwrap();
        let got = by_id[json["id"].as_str().unwrap()];
        assert_eq!(got["text"], json["text"]);
        assert_eq!(got["rating"], json["rating"]);
        assert_eq!(got["customer_id"], json["customer_id"]);
        assert_eq!(got["_key"], json["customer_id"]);
        assert_eq!(got["_timestamp"].as_i64(), Some(record.timestamp_ms));
        assert_eq!(got["_schema_id"], 1);
    }
    // What was registered: the columns under the configured record name.
    let subject = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args([
            "schema",
            "pull",
            "feedback-avro-value",
            "--registry",
            &registry.url,
        ])
        .output()
        .unwrap();
    let schema: serde_json::Value = serde_json::from_slice(&subject.stdout).unwrap();
    assert_eq!(
        (schema["name"].as_str(), schema["namespace"].as_str()),
        (Some("FeedbackOut"), Some("com.example"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pinned_schema_version_is_used_as_it_is_and_one_that_does_not_fit_stops_the_start() {
    let registry = Registry::start();
    let pinned = r#"{"type": "record", "name": "Pinned", "fields": [
        {"name": "id", "type": "string"}, {"name": "customer_id", "type": ["null", "string"]},
        {"name": "rating", "type": ["null", "int"]}, {"name": "text", "type": "string"},
        {"name": "_timestamp", "type": ["null", {"type": "long", "logicalType": "timestamp-millis"}]}]}"#;
    registry.register(
        "Other",
        r#"{"type": "record", "name": "Other", "fields": [{"name": "x", "type": "long"}]}"#,
    );
    let id = registry.register("feedback-avro-value", pinned);
    let cluster = MockCluster::new(1).unwrap();
    cluster.create_topic("feedback", 1, 1).unwrap();
    cluster.create_topic("feedback-avro", 1, 1).unwrap();
    let brokers = cluster.bootstrap_servers();
    let out = tempfile::tempdir().unwrap();
    let file = json_to_avro_pipeline(
        out.path(),
        &brokers,
        &registry.url,
        "      auto_register: false\n",
    );
    let Running {
        stats,
        shutdown,
        handle,
        stop_on_panic: _stop_on_panic,
    } = spawn_pipeline(sluice::pipeline::load(&file).unwrap_or_else(|e| panic!("{e}")));
    let sent: Vec<_> =
        sluice::demo::feeds::feedback::FeedbackGenerator::new(6, 0.0, 1_795_305_600_000, 1_000)
            .take(50)
            .collect();
    sluice::demo::feeds::feedback::produce(&brokers, "feedback", sent)
        .await
        .unwrap();
    assert!(
        eventually(Duration::from_secs(60), || stats.snapshot().kafka_messages
            == 50)
        .await
    );
    shutdown.cancel();
    handle.await.unwrap().unwrap();
    let read = read_avro(&brokers, "feedback-avro", &registry.url, 50);
    assert!(
        read.iter().all(|r| r["_schema_id"] == id),
        "written with the pinned id {id}"
    );
    assert_eq!(registry.len(), 2, "nothing registered");

    // A version whose fields the columns cannot fill: the start fails, naming the sink.
    let file = json_to_avro_pipeline(
        out.path(),
        &brokers,
        &registry.url,
        "      auto_register: false\n      subject_strategy: record\n      record_name: Other\n",
    );
    let running = spawn_pipeline(sluice::pipeline::load(&file).unwrap_or_else(|e| panic!("{e}")));
    let error = tokio::time::timeout(Duration::from_secs(60), running.handle)
        .await
        .expect("the start fails promptly")
        .unwrap()
        .expect_err("the columns do not fit");
    let text = crate::common::error_chain(&error);
    assert!(
        text.contains("sinks[0].kafka") && text.contains("do not fit"),
        "{text}"
    );
}

/// The lines of a pipeline file that are not its header comment, name, group or
/// `decode` section.
fn shared_lines(text: &str) -> Vec<&str> {
    let mut in_decode = false;
    text.lines()
        .skip_while(|l| l.starts_with('#'))
        .filter(|l| {
            if !l.starts_with(' ') {
                in_decode = l.starts_with("decode:");
            }
            !in_decode && !l.starts_with("name:") && !l.trim_start().starts_with("group_id:")
        })
        .collect()
}

#[test]
fn the_avro_and_protobuf_sentiment_pipelines_are_the_sentiment_pipeline_but_for_their_decode_section(
) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("pipelines");
    let json = std::fs::read_to_string(root.join("sentiment.yaml")).unwrap();
    let json_pipeline = sluice::pipeline::load(&root.join("sentiment.yaml")).unwrap();
    for (file, format) in [
        ("sentiment-avro.yaml", sluice::config::RecordFormat::Avro),
        (
            "sentiment-protobuf.yaml",
            sluice::config::RecordFormat::Protobuf,
        ),
    ] {
        let text = std::fs::read_to_string(root.join(file)).unwrap();
        assert_eq!(shared_lines(&text), shared_lines(&json), "{file}");
        let pipeline = sluice::pipeline::load(&root.join(file)).unwrap();
        assert_eq!(pipeline.config.decode.format, format);
        // The schema declares the JSON schema's fields, in order.
        let names = |schema: &arrow::datatypes::Schema| -> Vec<String> {
            schema.fields().iter().map(|f| f.name().clone()).collect()
        };
        assert_eq!(
            names(&pipeline.record_schema),
            names(&json_pipeline.record_schema),
            "{file}"
        );
    }
}

#[test]
fn avro_settings_mistakes_name_their_key() {
    let dir = tempfile::tempdir().unwrap();
    let file = avro_pipeline(
        dir.path(),
        "localhost:9",
        "t",
        "order.avsc",
        "http://127.0.0.1:1",
    );
    let good = std::fs::read_to_string(&file).unwrap();
    let json_schema = format!(
        "{}/schemas/customer_feedback.json",
        env!("CARGO_MANIFEST_DIR")
    );
    for (from, to, expected) in [
        (
            format!("schema: {HERE}/order.avsc"),
            format!("schema: {json_schema}"),
            "decode.schema: format: avro reads records into an Avro schema: expected a .avsc file",
        ),
        (
            "  schema_registry:\n    url: http://127.0.0.1:1\n    timeout: 2s\n".to_owned(),
            String::new(),
            "decode.schema_registry: format: avro needs the registry",
        ),
        (
            "url: http://127.0.0.1:1".to_owned(),
            "url: registry:8081".to_owned(),
            "decode.schema_registry.url: expected an http:// or https:// URL",
        ),
        (
            "    timeout: 2s\n".to_owned(),
            "    timeout: 2s\n    token: x\n".to_owned(),
            "decode.schema_registry",
        ),
    ] {
        std::fs::write(&file, good.replace(&from, &to)).unwrap();
        let error = sluice::pipeline::load(&file)
            .map(|_| ())
            .expect_err(expected)
            .to_string();
        assert!(error.contains(expected), "{expected}\n{error}");
    }
    // A bad reader schema is reported with its file.
    let bad = dir.path().join("bad.avsc");
    std::fs::write(
        &bad,
        r#"{"type": "record", "name": "X", "fields": [{"name": "a", "type": "nope"}]}"#,
    )
    .unwrap();
    std::fs::write(
        &file,
        good.replace(&format!("{HERE}/order.avsc"), &bad.display().to_string()),
    )
    .unwrap();
    let error = sluice::pipeline::load(&file)
        .map(|_| ())
        .unwrap_err()
        .to_string();
    assert!(
        error.contains("decode.schema") && error.contains("bad.avsc"),
        "{error}"
    );
}

#[test]
fn avro_sink_settings_mistakes_name_their_key() {
    let dir = tempfile::tempdir().unwrap();
    let file = json_to_avro_pipeline(dir.path(), "localhost:9", "http://127.0.0.1:1", "");
    let good = std::fs::read_to_string(&file).unwrap();
    for (from, to, expected) in [
        (
            "      schema_registry:\n        url: http://127.0.0.1:1\n",
            "",
            "sinks[0].kafka.schema_registry: format: avro needs a schema registry",
        ),
        (
            "      format: avro\n",
            "",
            "sinks[0].kafka.format: schema_registry, record_name, auto_register and schema_version are for format: avro",
        ),
        (
            "      format: avro\n",
            "      format: avro\n      record_name: 9lives\n",
            "sinks[0].kafka.record_name: `9lives` is not an Avro full name",
        ),
        (
            "      format: avro\n",
            "      format: avro\n      schema_version: \"3\"\n",
            "sinks[0].kafka.schema_version: only with auto_register: false",
        ),
        (
            "    topics: [feedback]\n",
            "    topics: [feedback]\n    headers: [id]\n",
            "source.kafka.headers[0]: column `id` exists already",
        ),
        (
            "      format: avro\n",
            "      format: avro\n      headers: {h: nope}\n",
            "sinks[0].kafka.headers.h: unknown column `nope`",
        ),
    ] {
        std::fs::write(&file, good.replace(from, to)).unwrap();
        let error = sluice::pipeline::load(&file)
            .map(|_| ())
            .expect_err(expected)
            .to_string();
        assert!(error.contains(expected), "{expected}\n{error}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn record_headers_become_columns_and_columns_become_headers() {
    use rdkafka::message::{Header, OwnedHeaders};
    use rdkafka::producer::{FutureProducer, FutureRecord};
    let cluster = MockCluster::new(1).unwrap();
    cluster.create_topic("feedback", 1, 1).unwrap();
    cluster.create_topic("traced", 1, 1).unwrap();
    let brokers = cluster.bootstrap_servers();
    let out = tempfile::tempdir().unwrap();
    let file = out.path().join("headers.yaml");
    std::fs::write(
        &file,
        format!(
            "name: headers\nsource:\n  kafka:\n    brokers: {brokers}\n    topics: [feedback]\n    headers:\n      - traceparent\n      - {{name: sig, column: signature, type: binary}}\n    batch:\n      max_rows: 100\n      max_wait: 100ms\ndecode:\n  schema: {root}/schemas/customer_feedback.json\nsinks:\n  - parquet:\n      path: {dir}/rows\n      roll:\n        max_age: 1s\n  - kafka:\n      topic: traced\n      columns: [id]\n      headers:\n        traceparent: traceparent\n        x-customer: customer_id\n        x-sig: signature\ndead_letter:\n  parquet:\n    path: {dir}/dead\n",
            root = env!("CARGO_MANIFEST_DIR"),
            dir = out.path().display()
        ),
    )
    .unwrap();
    let Running {
        stats,
        shutdown,
        handle,
        stop_on_panic: _stop_on_panic,
    } = spawn_pipeline(sluice::pipeline::load(&file).unwrap_or_else(|e| panic!("{e}")));
    let producer: FutureProducer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .create()
        .unwrap();
    for i in 0..30 {
        let payload = format!(r#"{{"id": "r{i}", "customer_id": "c{i}", "text": "t"}}"#);
        let trace = format!("00-{i:032x}-01");
        let headers = match i % 3 {
            // Both, the trace header twice (the last one counts).
            0 => Some(
                OwnedHeaders::new()
                    .insert(Header {
                        key: "traceparent",
                        value: Some("stale"),
                    })
                    .insert(Header {
                        key: "sig",
                        value: Some(&[0xff_u8, 0x00, i as u8][..]),
                    })
                    .insert(Header {
                        key: "traceparent",
                        value: Some(trace.as_str()),
                    }),
            ),
            1 => Some(OwnedHeaders::new().insert(Header {
                key: "other",
                value: Some("ignored"),
            })),
            _ => None,
        };
        let mut record = FutureRecord::<(), _>::to("feedback").payload(&payload);
        if let Some(headers) = headers {
            record = record.headers(headers);
        }
        producer
            .send(record, Duration::from_secs(10))
            .await
            .unwrap();
    }
    assert!(
        eventually(Duration::from_secs(60), || {
            let s = stats.snapshot();
            s.parquet_rows == 30 && s.kafka_messages == 30
        })
        .await
    );
    shutdown.cancel();
    handle.await.unwrap().unwrap();

    let batches = read_dataset(&out.path().join("rows"));
    assert_eq!(rows(&batches), 30);
    for batch in &batches {
        let schema = batch.schema();
        let names: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
        assert_eq!(names[6..8], ["traceparent", "signature"], "{names:?}");
        let ids = batch
            .column_by_name("id")
            .unwrap()
            .as_string::<i32>()
            .clone();
        let traces = batch
            .column_by_name("traceparent")
            .unwrap()
            .as_string::<i32>()
            .clone();
        let sigs = batch
            .column_by_name("signature")
            .unwrap()
            .as_binary::<i32>()
            .clone();
        for row in 0..batch.num_rows() {
            let i: usize = ids.value(row)[1..].parse().unwrap();
            if i.is_multiple_of(3) {
                assert_eq!(traces.value(row), format!("00-{i:032x}-01"));
                assert_eq!(sigs.value(row), [0xff, 0x00, i as u8]);
            } else {
                assert!(traces.is_null(row) && sigs.is_null(row));
            }
        }
    }
    let messages = crate::common::read_topic(&brokers, "traced", 30, Duration::from_secs(10));
    assert_eq!(messages.len(), 30);
    for message in &messages {
        let value: serde_json::Value = serde_json::from_slice(&message.payload).unwrap();
        let i: usize = value["id"].as_str().unwrap()[1..].parse().unwrap();
        assert_eq!(
            message.headers.get("x-customer").map(String::as_str),
            Some(format!("c{i}").as_str())
        );
        if i.is_multiple_of(3) {
            assert_eq!(message.headers["traceparent"], format!("00-{i:032x}-01"));
            assert!(message.headers.contains_key("x-sig"));
        } else {
            assert!(
                !message.headers.contains_key("traceparent"),
                "a null sends no header"
            );
        }
    }
}

//! Protobuf in the Confluent wire format: records produced by confluent-kafka's
//! `ProtobufSerializer` with its `SchemaRegistryClient` against the test registry
//! (`common::registry`), from message classes built out of the `.proto` files in
//! `tests/it/proto/` (compiled here with protox, no protoc), consumed by sluice from the
//! mock cluster into Parquet. Every protobuf shape arrives with its value; writers moving
//! between versions decode as the declared message; an incompatible writer's records
//! become dead letters naming the schema id and the field.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use arrow::array::{AsArray, RecordBatch};
use prost::Message;
use rdkafka::mocking::MockCluster;
use serde_json::{json, Value};

use crate::common::registry::Registry;
use crate::common::script::Script;
use crate::common::{eventually, read_dataset, spawn_pipeline, Running};

const HERE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/it/proto");

/// The confluent-kafka producer process (`tests/it/proto/produce.py`).
struct ProtobufProducer {
    script: Script,
    dir: PathBuf,
}

impl ProtobufProducer {
    fn start(brokers: &str, topic: &str, registry: &str, dir: &Path) -> ProtobufProducer {
        ProtobufProducer {
            script: Script::start(&format!("{HERE}/produce.py"), &[brokers, topic, registry]),
            dir: dir.to_owned(),
        }
    }

    /// Produces records `start..start + count` of `kind` as `message` of `proto`.
    fn produce(&mut self, proto: &str, message: &str, kind: &str, start: usize, count: usize) {
        let descriptors = self.dir.join(format!("{proto}.pb"));
        let set = protox::compile([proto], [HERE]).unwrap();
        std::fs::write(&descriptors, set.encode_to_vec()).unwrap();
        self.script.run(&format!(
            "produce {} {message} {kind} {start} {count}",
            descriptors.display()
        ));
    }
}

/// A pipeline reading `message` of `proto` from `topic` into `out/rows`.
fn start(
    dir: &Path,
    brokers: &str,
    topic: &str,
    proto: &str,
    message: &str,
    registry: &str,
) -> Running {
    let file = dir.join("protobuf.yaml");
    std::fs::write(
        &file,
        format!(
            "name: proto-{topic}\nsource:\n  kafka:\n    brokers: {brokers}\n    topics: [{topic}]\n    batch:\n      max_rows: 500\n      max_wait: 100ms\ndecode:\n  format: protobuf\n  schema: {HERE}/{proto}\n  message: {message}\n  schema_registry:\n    url: {registry}\n    timeout: 2s\nsinks:\n  - parquet:\n      path: {out}/rows\n      roll:\n        max_age: 1s\ndead_letter:\n  parquet:\n    path: {out}/dead\n    roll:\n      max_age: 1s\n",
            out = dir.display()
        ),
    )
    .unwrap();
    spawn_pipeline(sluice::pipeline::load(&file).unwrap_or_else(|e| panic!("{e}")))
}

/// Rows as JSON objects (arrow-json), sorted by `id`'s number.
fn json_rows(batches: &[RecordBatch]) -> Vec<Value> {
    let mut buffer = Vec::new();
    {
        let mut writer = arrow::json::ArrayWriter::new(&mut buffer);
        for batch in batches {
            writer.write(batch).unwrap();
        }
        writer.finish().unwrap();
    }
    let mut rows: Vec<Value> = if buffer.is_empty() {
        Vec::new()
    } else {
        serde_json::from_slice(&buffer).unwrap()
    };
    rows.sort_by_key(|r| r["id"].as_str().unwrap()[1..].parse::<i64>().unwrap());
    rows
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_protobuf_shape_from_the_confluent_serializer_arrives_with_its_value() {
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
    } = start(
        out.path(),
        &brokers,
        "orders",
        "order.proto",
        "shop.Order",
        &registry.url,
    );
    let mut producer = ProtobufProducer::start(&brokers, "orders", &registry.url, out.path());
    producer.produce("order.proto", "shop.Order", "order", 0, 60);
    assert!(
        eventually(Duration::from_secs(60), || stats.snapshot().parquet_rows
            == 60)
        .await,
        "{:?}",
        stats.snapshot()
    );
    shutdown.cancel();
    let summary = handle.await.unwrap().unwrap();
    assert_eq!(summary.dead_letters, 0);

    let batches = read_dataset(&out.path().join("rows"));
    let schema = batches[0].schema();
    let types: Vec<String> = [
        "placed_at",
        "status",
        "tags",
        "attributes",
        "customer",
        "weight_grams",
        "sequence",
        "blob",
    ]
    .iter()
    .map(|c| schema.field_with_name(c).unwrap().data_type().to_string())
    .collect();
    assert!(types[0].starts_with("Timestamp(µs"), "{types:?}");
    assert_eq!(types[1], "Utf8", "enum as its name");
    assert!(types[2].starts_with("List("), "{types:?}");
    assert!(types[3].starts_with("Map("), "{types:?}");
    assert!(types[4].starts_with("Struct("), "{types:?}");
    assert_eq!(types[5], "Int64", "a wrapper is its value");
    assert_eq!(types[6], "UInt64");
    assert_eq!(types[7], "Binary");
    let rows = json_rows(&batches);
    assert_eq!(rows.len(), 60);
    for (i, row) in rows.iter().enumerate() {
        let i = i as i64;
        assert!(
            (row["amount"].as_f64().unwrap() - i as f64 * 1.01).abs() < 1e-9,
            "{row}"
        );
        let placed = batches
            .iter()
            .flat_map(|b| {
                let ids = b.column_by_name("id").unwrap().as_string::<i32>().clone();
                let placed = b
                    .column_by_name("placed_at")
                    .unwrap()
                    .as_primitive::<arrow::datatypes::TimestampMicrosecondType>()
                    .clone();
                (0..b.num_rows())
                    .filter(move |&r| ids.value(r) == format!("o{i}"))
                    .map(move |r| placed.value(r))
            })
            .next()
            .unwrap();
        assert_eq!(placed, (1_700_000_000_000 + i * 1000) * 1000);
        assert_eq!(row["status"], ["NEW", "PAID", "SHIPPED"][i as usize % 3]);
        let tags: Vec<Value> = (0..i % 3).map(|j| json!(format!("t{j}"))).collect();
        assert_eq!(row["tags"], json!(tags), "{row}");
        assert_eq!(row["attributes"], json!({"double": 2 * i, "qty": i}));
        assert_eq!(
            row["customer"],
            json!({"name": format!("c{}", i % 5), "vip": i % 2 == 0})
        );
        if i % 4 == 0 {
            assert_eq!(row["coupon"], format!("C{i}"));
        } else {
            assert!(
                row.get("coupon").is_none_or(Value::is_null),
                "unset optional: null {row}"
            );
        }
        if i % 2 == 0 {
            assert_eq!(row["weight_grams"], i * 10);
        } else {
            assert!(row.get("weight_grams").is_none_or(Value::is_null), "{row}");
        }
        assert_eq!(row["delta"], -i, "sint32 (zigzag)");
        assert_eq!(row["sequence"].as_u64().unwrap(), (1u64 << 63) + i as u64);
        let others: Vec<Value> = (0..i % 2)
            .map(|j| json!({"name": format!("x{j}"), "vip": true}))
            .collect();
        assert_eq!(row["others"], json!(others));
        if i % 3 == 1 {
            assert_eq!(row["card"], format!("card{i}"));
        } else {
            assert!(
                row.get("card").is_none_or(Value::is_null),
                "oneof member unset: null"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn protobuf_writers_moving_between_versions_decode_and_an_incompatible_one_is_dead_lettered()
{
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
        "feedback-reader.proto",
        "fb.Feedback",
        &registry.url,
    );
    let mut producer = ProtobufProducer::start(&brokers, "feedback", &registry.url, out.path());
    producer.produce("feedback-v1.proto", "fb.Feedback", "v1", 0, 40);
    producer.produce("feedback-v2.proto", "fb.Feedback", "v2", 40, 40);
    producer.produce(
        "feedback-incompatible.proto",
        "fb.Feedback",
        "incompatible",
        80,
        5,
    );
    producer.produce("feedback-v1.proto", "fb.Feedback", "v1", 85, 15);
    assert!(
        eventually(Duration::from_secs(60), || {
            let s = stats.snapshot();
            // Rows and dead letters, both in Parquet.
            s.parquet_rows == 100 && s.dead_letters == 5
        })
        .await,
        "{:?}",
        stats.snapshot()
    );
    shutdown.cancel();
    handle.await.unwrap().unwrap();

    let rows = json_rows(&read_dataset(&out.path().join("rows")));
    assert_eq!(rows.len(), 95);
    for row in &rows {
        let i: i64 = row["id"].as_str().unwrap()[1..].parse().unwrap();
        assert_eq!(row["rating"], i % 5 + 1, "int32 written, int64 read");
        if (40..80).contains(&i) {
            assert_eq!(row["note"], format!("n{i}"));
        } else {
            assert!(
                row.get("note").is_none_or(Value::is_null),
                "v1 rows: null {row}"
            );
        }
        assert!(
            row.get("channel").is_none(),
            "a field the reader does not declare is skipped"
        );
    }
    let dead = read_dataset(&out.path().join("dead"));
    let mut letters = 0;
    for batch in &dead {
        let reasons = batch
            .column_by_name("reason")
            .unwrap()
            .as_string::<i32>()
            .clone();
        for row in 0..batch.num_rows() {
            letters += 1;
            let reason = reasons.value(row);
            assert!(
                reason.contains("cannot be read as the declared schema: field `rating` (2) is string in the writer, int64 in the reader"),
                "{reason}"
            );
        }
    }
    assert_eq!(letters, 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rows_written_as_protobuf_are_read_back_by_the_confluent_deserializer() {
    use sluice::demo::feeds::feedback::{produce, FeedbackGenerator};
    let registry = Registry::start();
    let cluster = MockCluster::new(1).unwrap();
    cluster.create_topic("feedback", 2, 1).unwrap();
    cluster.create_topic("feedback-proto", 2, 1).unwrap();
    let brokers = cluster.bootstrap_servers();
    let out = tempfile::tempdir().unwrap();
    let file = out.path().join("to-proto.yaml");
    std::fs::write(
        &file,
        format!(
            "name: to-proto\nsource:\n  kafka:\n    brokers: {brokers}\n    topics: [feedback]\n    batch:\n      max_rows: 200\n      max_wait: 100ms\ndecode:\n  schema: {root}/schemas/customer_feedback.json\nsinks:\n  - kafka:\n      topic: feedback-proto\n      format: protobuf\n      record_name: com.example.FeedbackOut\n      key: customer_id\n      columns: [id, customer_id, rating, text, ts, _offset, _timestamp]\n      schema_registry:\n        url: {registry}\ndead_letter:\n  parquet:\n    path: {out}/dead\n",
            root = env!("CARGO_MANIFEST_DIR"),
            registry = registry.url,
            out = out.path().display()
        ),
    )
    .unwrap();
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

    // The schema sluice registered, compiled for the reader's message class.
    let (_, answer) = crate::common::http_get(
        registry.url.trim_start_matches("http://"),
        "/subjects/feedback-proto-value/versions/latest",
    )
    .unwrap();
    let registered: Value = serde_json::from_str(&answer).unwrap();
    assert_eq!(registered["schemaType"], "PROTOBUF");
    let proto = registered["schema"].as_str().unwrap();
    assert!(
        proto.contains("package com.example;") && proto.contains("message FeedbackOut {"),
        "{proto}"
    );
    assert!(
        proto.contains("optional int32 rating = 3;"),
        "a nullable column is optional: {proto}"
    );
    std::fs::write(out.path().join("out.proto"), proto).unwrap();
    let set = protox::compile(["out.proto"], [out.path()]).unwrap();
    let descriptors = out.path().join("out.pb");
    std::fs::write(&descriptors, set.encode_to_vec()).unwrap();
    let read = Command::new("python3")
        .arg(format!("{HERE}/consume.py"))
        .args([&brokers, "feedback-proto"])
        .arg(&descriptors)
        .args(["com.example.FeedbackOut", "300"])
        .output()
        .unwrap();
    assert!(
        read.status.success(),
        "{}",
        String::from_utf8_lossy(&read.stderr)
    );
    let read: Vec<Value> = serde_json::from_slice(&read.stdout).unwrap();
    assert_eq!(read.len(), 300);
    let by_id: std::collections::HashMap<String, &Value> = read
        .iter()
        .map(|r| (r["id"].as_str().unwrap().to_owned(), r))
        .collect();
    for record in &sent {
        let json: Value = serde_json::from_slice(&record.payload).unwrap();
        let got = by_id[json["id"].as_str().unwrap()];
        assert_eq!(got["text"], json["text"]);
        assert_eq!(
            got.get("rating").unwrap_or(&Value::Null),
            &json["rating"],
            "unset when null"
        );
        assert_eq!(
            got.get("customer_id").unwrap_or(&Value::Null),
            &json["customer_id"]
        );
        assert_eq!(got["_key"], json["customer_id"]);
        assert_eq!(got["_timestamp"].as_i64(), Some(record.timestamp_ms));
        assert_eq!(got["_schema_id"], 1);
    }
}

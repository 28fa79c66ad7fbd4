//! Record bytes -> Arrow RecordBatch (the decode stage), in rows/s and bytes/s: JSON, and
//! Avro in the Confluent wire format beside it, over the same records.
//!
//! Input: 10,000 sample customer-feedback records in one raw batch, as the Kafka source
//! hands them over. `clean` has no bad record (the fast path); `one_percent_bad` has 1%
//! malformed records, which sends the batch down the per-record path. `decode_avro/clean`
//! is the clean batch's rows encoded by arrow-avro's Confluent-framed encoder with
//! `schemas/customer_feedback.avsc` (schema id 1), decoded against the same schema;
//! `decode_protobuf/clean` is the same rows as `schemas/customer_feedback.proto` messages
//! (prost-reflect's encoder, Confluent framing, schema id 1).

use std::hint::black_box;
use std::path::Path;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use sluice::batch::{BatchId, RawBatch, TopicPartition};
use sluice::config::{SchemaRegistryConfig, UnknownFields};
use sluice::decode::avro::AvroDecoder;
use sluice::decode::protobuf::ProtobufDecoder;
use sluice::decode::JsonDecoder;
use sluice::demo::feeds::feedback::FeedbackGenerator;
use sluice::schema_registry::SchemaRegistry;

const ROWS: usize = 10_000;

fn raw_batch(malformed_rate: f64) -> RawBatch {
    let mut batch = RawBatch::new(
        BatchId(1),
        TopicPartition::new("customer-feedback", 0),
        ROWS,
    );
    for (offset, record) in FeedbackGenerator::new(1, malformed_rate, 1_795_305_600_000, 1_000)
        .take(ROWS)
        .enumerate()
    {
        batch.push(
            offset as i64,
            Some(record.timestamp_ms),
            Some(record.key.as_bytes()),
            Some(&record.payload),
        );
    }
    batch
}

fn decoder() -> JsonDecoder {
    let schema_file = Path::new(env!("CARGO_MANIFEST_DIR")).join("schemas/customer_feedback.json");
    let schema = sluice::schema::load(&schema_file).expect("schema");
    JsonDecoder::new(schema.fields, 16 * 1024, UnknownFields::Ignore)
}

fn bench_decode(c: &mut Criterion) {
    let decoder = decoder();
    for (name, rate) in [("clean", 0.0), ("one_percent_bad", 0.01)] {
        let raw = raw_batch(rate);
        rows_and_bytes(c, &format!("decode_json/{name}"), &raw, |raw| {
            decoder.decode(raw).expect("decode")
        });
    }
}

/// The clean batch's records as Confluent-framed Avro (writer schema id 1).
fn avro_batch(
    json: &RawBatch,
    avsc: &str,
    record_schema: &arrow::datatypes::SchemaRef,
) -> RawBatch {
    use arrow::array::RecordBatch;
    use arrow_avro::schema::{FingerprintStrategy, SCHEMA_METADATA_KEY};
    use arrow_avro::writer::{format::AvroSoeFormat, WriterBuilder};
    let rows = decoder().decode(json).expect("decode").rows;
    let columns = record_schema
        .fields()
        .iter()
        .map(|field| {
            let column = rows
                .column_by_name(field.name())
                .expect("a declared column");
            arrow::compute::cast(column, field.data_type()).expect("cast")
        })
        .collect();
    let mut metadata = std::collections::HashMap::new();
    metadata.insert(SCHEMA_METADATA_KEY.to_owned(), avsc.to_owned());
    let schema = record_schema.as_ref().clone().with_metadata(metadata);
    let batch = RecordBatch::try_new(std::sync::Arc::new(schema.clone()), columns).expect("batch");
    let mut encoder = WriterBuilder::new(schema)
        .with_fingerprint_strategy(FingerprintStrategy::Id(1))
        .build_encoder::<AvroSoeFormat>()
        .expect("encoder");
    encoder.encode(&batch).expect("encode");
    let encoded = encoder.flush();
    let mut raw = RawBatch::new(
        BatchId(1),
        TopicPartition::new("customer-feedback", 0),
        ROWS,
    );
    for (offset, record) in json.records().enumerate() {
        let payload = encoded.row(offset).expect("a row");
        raw.push(offset as i64, record.timestamp, record.key, Some(&payload));
    }
    raw
}

fn bench_decode_avro(c: &mut Criterion) {
    let avsc_file = Path::new(env!("CARGO_MANIFEST_DIR")).join("schemas/customer_feedback.avsc");
    let record = sluice::schema::load(&avsc_file).expect("schema");
    let avsc = record.avro.expect("an Avro schema");
    let registry = offline_registry();
    let decoder = AvroDecoder::new(&avsc, record.fields.clone(), 16 * 1024, registry);
    assert_eq!(decoder.add_writer(1, &avsc), None);
    let raw = avro_batch(&raw_batch(0.0), &avsc, &record.fields);
    let decoded = decoder.decode(&raw).expect("decode");
    assert_eq!(
        (decoded.rows.num_rows(), decoded.dead_letters.len()),
        (ROWS, 0)
    );
    rows_and_bytes(c, "decode_avro/clean", &raw, |raw| {
        decoder.decode(raw).expect("decode")
    });
}

/// The clean batch's rows as Confluent-framed protobuf messages (writer schema id 1).
fn protobuf_batch(json: &RawBatch, message: &prost_reflect::MessageDescriptor) -> RawBatch {
    use arrow::array::{Array, AsArray};
    use prost::Message;
    use prost_reflect::{DynamicMessage, Value};
    let rows = decoder().decode(json).expect("decode").rows;
    let text = |name: &str| {
        rows.column_by_name(name)
            .expect("column")
            .as_string::<i32>()
            .clone()
    };
    let (ids, customers, texts, channels) = (
        text("id"),
        text("customer_id"),
        text("text"),
        text("channel"),
    );
    let ratings = arrow::compute::cast(
        rows.column_by_name("rating").expect("rating"),
        &arrow::datatypes::DataType::Int32,
    )
    .expect("cast");
    let ratings = ratings.as_primitive::<arrow::datatypes::Int32Type>();
    let ts = rows
        .column_by_name("ts")
        .expect("ts")
        .as_primitive::<arrow::datatypes::TimestampMillisecondType>()
        .clone();
    let stamp = message.get_field_by_name("ts").expect("ts").kind();
    let stamp = stamp.as_message().expect("a message").clone();
    let mut raw = RawBatch::new(
        BatchId(1),
        TopicPartition::new("customer-feedback", 0),
        ROWS,
    );
    for (row, record) in json.records().enumerate() {
        let mut m = DynamicMessage::new(message.clone());
        m.set_field_by_name("id", Value::String(ids.value(row).to_owned()));
        m.set_field_by_name("text", Value::String(texts.value(row).to_owned()));
        if customers.is_valid(row) {
            m.set_field_by_name(
                "customer_id",
                Value::String(customers.value(row).to_owned()),
            );
        }
        if channels.is_valid(row) {
            m.set_field_by_name("channel", Value::String(channels.value(row).to_owned()));
        }
        if ratings.is_valid(row) {
            m.set_field_by_name("rating", Value::I32(ratings.value(row)));
        }
        if ts.is_valid(row) {
            let mut t = DynamicMessage::new(stamp.clone());
            t.set_field_by_name("seconds", Value::I64(ts.value(row).div_euclid(1000)));
            t.set_field_by_name(
                "nanos",
                Value::I32((ts.value(row).rem_euclid(1000) * 1_000_000) as i32),
            );
            m.set_field_by_name("ts", Value::Message(t));
        }
        let mut payload = vec![0, 0, 0, 0, 1, 0];
        payload.extend(m.encode_to_vec());
        raw.push(row as i64, record.timestamp, record.key, Some(&payload));
    }
    raw
}

fn bench_decode_protobuf(c: &mut Criterion) {
    let proto_file = Path::new(env!("CARGO_MANIFEST_DIR")).join("schemas/customer_feedback.proto");
    let (fields, message) = sluice::proto::load(&proto_file, None).expect("schema");
    let registry = offline_registry();
    let text = std::fs::read_to_string(&proto_file).expect("read");
    let decoder = ProtobufDecoder::new(message.clone(), fields, 16 * 1024, registry);
    assert_eq!(decoder.add_writer(1, &text), None);
    let raw = protobuf_batch(&raw_batch(0.0), &message);
    let decoded = decoder.decode(&raw).expect("decode");
    assert_eq!(
        (decoded.rows.num_rows(), decoded.dead_letters.len()),
        (ROWS, 0)
    );
    rows_and_bytes(c, "decode_protobuf/clean", &raw, |raw| {
        decoder.decode(raw).expect("decode")
    });
}

/// A registry client that is never asked: the benches make their writer schemas known.
fn offline_registry() -> SchemaRegistry {
    SchemaRegistry::new(&SchemaRegistryConfig {
        url: "http://127.0.0.1:9".into(),
        username: None,
        password: None,
        bearer_token: None,
        timeout: std::time::Duration::from_secs(1),
    })
    .expect("client")
}

/// Benchmarks `decode` over `raw` as rows/s and as bytes/s.
fn rows_and_bytes<T>(
    c: &mut Criterion,
    name: &str,
    raw: &RawBatch,
    decode: impl Fn(&RawBatch) -> T,
) {
    let mut group = c.benchmark_group(name);
    group.throughput(Throughput::Elements(ROWS as u64));
    group.bench_function("rows", |b| b.iter(|| decode(black_box(raw))));
    group.throughput(Throughput::Bytes(raw.byte_size() as u64));
    group.bench_function("bytes", |b| b.iter(|| decode(black_box(raw))));
    group.finish();
}

criterion_group!(
    benches,
    bench_decode,
    bench_decode_avro,
    bench_decode_protobuf
);
criterion_main!(benches);

//! Record bytes -> Arrow RecordBatch (the decode stage), in rows/s and bytes/s: JSON, and
//! Avro in the Confluent wire format beside it, over the same records.
//!
//! Input: 10,000 sample customer-feedback records in one raw batch, as the Kafka source
//! hands them over. `clean` has no bad record (the fast path); `one_percent_bad` has 1%
//! malformed records, which sends the batch down the per-record path. `decode_avro/clean`
//! is the clean batch's rows encoded by arrow-avro's Confluent-framed encoder with
//! `schemas/customer_feedback.avsc` (schema id 1), decoded against the same schema.

use std::hint::black_box;
use std::path::Path;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use sluice::batch::{BatchId, RawBatch, TopicPartition};
use sluice::config::{SchemaRegistryConfig, UnknownFields};
use sluice::decode::avro::AvroDecoder;
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
        let mut group = c.benchmark_group(format!("decode_json/{name}"));
        group.throughput(Throughput::Elements(ROWS as u64));
        group.bench_function("rows", |b| {
            b.iter(|| decoder.decode(black_box(&raw)).expect("decode"))
        });
        group.throughput(Throughput::Bytes(raw.byte_size() as u64));
        group.bench_function("bytes", |b| {
            b.iter(|| decoder.decode(black_box(&raw)).expect("decode"))
        });
        group.finish();
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
    let registry = SchemaRegistry::new(&SchemaRegistryConfig {
        url: "http://127.0.0.1:9".into(),
        username: None,
        password: None,
        bearer_token: None,
        timeout: std::time::Duration::from_secs(1),
    })
    .expect("client");
    let decoder = AvroDecoder::new(&avsc, record.fields.clone(), 16 * 1024, registry);
    assert_eq!(decoder.add_writer(1, &avsc), None);
    let raw = avro_batch(&raw_batch(0.0), &avsc, &record.fields);
    let decoded = decoder.decode(&raw).expect("decode");
    assert_eq!(
        (decoded.rows.num_rows(), decoded.dead_letters.len()),
        (ROWS, 0)
    );
    let mut group = c.benchmark_group("decode_avro/clean");
    group.throughput(Throughput::Elements(ROWS as u64));
    group.bench_function("rows", |b| {
        b.iter(|| decoder.decode(black_box(&raw)).expect("decode"))
    });
    group.throughput(Throughput::Bytes(raw.byte_size() as u64));
    group.bench_function("bytes", |b| {
        b.iter(|| decoder.decode(black_box(&raw)).expect("decode"))
    });
    group.finish();
}

criterion_group!(benches, bench_decode, bench_decode_avro);
criterion_main!(benches);

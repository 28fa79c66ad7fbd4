//! JSON bytes -> Arrow RecordBatch (the decode stage), in rows/s and bytes/s.
//!
//! Input: 10,000 sample customer-feedback records in one raw batch, as the Kafka source
//! hands them over. `clean` has no bad record (the fast path); `one_percent_bad` has 1%
//! malformed records, which sends the batch down the per-record path.

use std::hint::black_box;
use std::path::Path;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use sluice::batch::{BatchId, RawBatch, TopicPartition};
use sluice::config::UnknownFields;
use sluice::decode::JsonDecoder;
use sluice::demo::feeds::feedback::FeedbackGenerator;

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

criterion_group!(benches, bench_decode);
criterion_main!(benches);

//! Arrow RecordBatch -> Parquet bytes (the Parquet sink's encoder), in rows/s and in
//! bytes/s of Arrow input: zstd and uncompressed, each with the writer's default
//! (dictionary on every column) and as the sinks write (`_tuned`: no dictionary for
//! mostly distinct string columns); the encoded size of each is printed.

use std::hint::black_box;
use std::path::Path;

use arrow::array::RecordBatch;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::WriterProperties;
use sluice::batch::{BatchId, RawBatch, TopicPartition};
use sluice::config::UnknownFields;
use sluice::decode::JsonDecoder;
use sluice::demo::feeds::feedback::FeedbackGenerator;

const ROWS: usize = 10_000;

fn rows() -> RecordBatch {
    let schema_file = Path::new(env!("CARGO_MANIFEST_DIR")).join("schemas/customer_feedback.json");
    let schema = sluice::schema::load(&schema_file).expect("schema");
    let decoder = JsonDecoder::new(schema.fields, 16 * 1024, UnknownFields::Ignore);
    let mut raw = RawBatch::new(
        BatchId(1),
        TopicPartition::new("customer-feedback", 0),
        ROWS,
    );
    for (offset, record) in FeedbackGenerator::new(1, 0.0, 1_795_305_600_000, 1_000)
        .take(ROWS)
        .enumerate()
    {
        raw.push(
            offset as i64,
            Some(record.timestamp_ms),
            None,
            Some(&record.payload),
        );
    }
    decoder.decode(&raw).expect("decode").rows
}

fn encode(rows: &RecordBatch, properties: &WriterProperties) -> Vec<u8> {
    let mut buffer = Vec::with_capacity(1 << 20);
    let mut writer =
        ArrowWriter::try_new(&mut buffer, rows.schema(), Some(properties.clone())).expect("writer");
    writer.write(rows).expect("write");
    writer.close().expect("close");
    buffer
}

fn bench_encode(c: &mut Criterion) {
    let rows = rows();
    let arrow_bytes = rows.get_array_memory_size() as u64;
    for (name, compression) in [
        ("zstd", Compression::ZSTD(ZstdLevel::default())),
        ("uncompressed", Compression::UNCOMPRESSED),
    ] {
        let default = WriterProperties::builder()
            .set_compression(compression)
            .build();
        // What the sinks write with: no dictionary for mostly distinct string columns.
        let (tuned, plain) = sluice::sink::dictionary::tune(&default, &rows);
        for (variant, properties) in [("", &default), ("_tuned", &tuned)] {
            eprintln!(
                "parquet_encode/{name}{variant}: {} bytes for {ROWS} rows (plain columns: {})",
                encode(&rows, properties).len(),
                if variant.is_empty() {
                    "none".to_owned()
                } else {
                    plain.join(", ")
                }
            );
            let mut group = c.benchmark_group(format!("parquet_encode/{name}{variant}"));
            group.throughput(Throughput::Elements(ROWS as u64));
            group.bench_function("rows", |b| b.iter(|| encode(black_box(&rows), properties)));
            group.throughput(Throughput::Bytes(arrow_bytes));
            group.bench_function("bytes", |b| b.iter(|| encode(black_box(&rows), properties)));
            group.finish();
        }
    }
}

criterion_group!(benches, bench_encode);
criterion_main!(benches);

//! The sentiment stages on the CPU: tokenize, the MiniLM encoder, the head, in rows/s.
//!
//! Input: 256 real review texts from `data/reviews.jsonl` (holdout split), decoded into
//! one batch. `encoder/fast_path` feeds one run of 32 rows straight from the Arrow buffers;
//! `encoder/sorted_runs_of_32` feeds all 256 rows, sorted by length and cut into runs of 32
//! (the dynamic batching path); `encoder/unsorted_runs_of_32` is the same without sorting;
//! `encoder/int8_sorted_runs_of_32` is the sorted path with the int8-quantized encoder.
//! Needs the models and data from `scripts/setup.sh`.

use std::hint::black_box;
use std::path::Path;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use sluice::batch::{Batch, BatchId, RawBatch, TopicPartition};
use sluice::config::UnknownFields;
use sluice::decode::JsonDecoder;
use sluice::demo::feeds::reviews;
use sluice::pipeline::Pipeline;
use sluice::stage::Chain;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

fn pipeline(dir: &Path, stages: &str) -> Pipeline {
    let text = format!(
        "name: bench\nsource:\n  kafka:\n    brokers: localhost:1\n    topics: [t]\ndecode:\n  schema: {ROOT}/schemas/customer_feedback.json\nmodels: {ROOT}/models\nstages:\n{stages}sinks:\n  - parquet:\n      path: {out}/rows\ndead_letter:\n  parquet:\n    path: {out}/dead\n",
        out = dir.display()
    );
    let path = dir.join("bench.yaml");
    std::fs::write(&path, text).expect("write pipeline");
    sluice::pipeline::load(&path).unwrap_or_else(|e| panic!("{e}"))
}

fn chain(runtime: &tokio::runtime::Runtime, pipeline: &Pipeline) -> Chain {
    runtime
        .block_on(Chain::build(&pipeline.stages))
        .unwrap_or_else(|e| panic!("{e}"))
}

fn batch(pipeline: &Pipeline, rows: usize) -> Batch {
    let all = reviews::load(&Path::new(ROOT).join("data/reviews.jsonl"), "holdout")
        .expect("run scripts/setup.sh");
    let picked = reviews::spread(&all, rows);
    let mut raw = RawBatch::new(
        BatchId(1),
        TopicPartition::new("customer-feedback", 0),
        rows,
    );
    for (i, record) in reviews::replay(&picked, 0.0, 1_795_305_600_000, 1_000)
        .iter()
        .enumerate()
    {
        raw.push(
            i as i64,
            Some(record.timestamp_ms),
            None,
            Some(&record.payload),
        );
    }
    JsonDecoder::new(
        pipeline.record_schema.clone(),
        1 << 20,
        UnknownFields::Ignore,
    )
    .decode(&raw)
    .expect("decode")
}

const TOKENIZE: &str = "  - tokenize: {input: text, tokenizer: minilm-l6}\n";

fn encoder(model: &str, max_batch: usize, sort: bool) -> String {
    let sort = if sort {
        ", sort_by_length_of: attention_mask"
    } else {
        ""
    };
    format!("{TOKENIZE}  - infer: {{model: {model}, device: cpu, max_batch: {max_batch}{sort}, inputs: {{input_ids: input_ids, attention_mask: attention_mask, token_type_ids: token_type_ids}}, outputs: {{sentence_embedding: embedding}}}}\n")
}

fn bench_inference(c: &mut Criterion) {
    let runtime = tokio::runtime::Runtime::new().expect("tokio");
    let dir = tempfile::tempdir().expect("tempdir");

    let tokenize = pipeline(dir.path(), TOKENIZE);
    let input = batch(&tokenize, 256);
    let tokenizer = chain(&runtime, &tokenize);
    let mut group = c.benchmark_group("tokenize");
    group.throughput(Throughput::Elements(256));
    group.bench_function("rows", |b| {
        b.iter(|| {
            runtime
                .block_on(tokenizer.process(black_box(input.clone())))
                .expect("tokenize")
        })
    });
    group.finish();

    let mut group = c.benchmark_group("encoder");
    group.sample_size(10);
    for (name, model, rows, max_batch, sort) in [
        ("fast_path_32_rows", "minilm-l6", 32, 32, false),
        ("unsorted_runs_of_32", "minilm-l6", 256, 32, false),
        ("sorted_runs_of_32", "minilm-l6", 256, 32, true),
        ("int8_sorted_runs_of_32", "minilm-l6-int8", 256, 32, true),
    ] {
        let pipeline = pipeline(dir.path(), &encoder(model, max_batch, sort));
        let input = batch(&pipeline, rows);
        let chain = chain(&runtime, &pipeline);
        group.throughput(Throughput::Elements(rows as u64));
        group.bench_function(name, |b| {
            b.iter(|| {
                runtime
                    .block_on(chain.process(black_box(input.clone())))
                    .expect("encode")
            })
        });
    }
    group.finish();
}

criterion_group!(benches, bench_inference);
criterion_main!(benches);

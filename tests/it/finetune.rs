//! Fine-tuning the encoder (`trainer.fine_tune`, `pipelines/retrain-sentiment-tuned.yaml`):
//! the real MiniLM encoder as `scripts/models/build_encoder.py` built it is read from its
//! ONNX file, every weight is trained on labelled review texts, and the exported model
//! (token ids -> probabilities) predicts like the trainer under ONNX Runtime; the gate
//! publishes the first version with its tokenizer and refuses a worse candidate.

use std::path::Path;
use std::sync::Arc;

use arrow::array::{ArrayRef, Int64Array, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Schema};

use sluice::demo::feeds::reviews;
use sluice::model::Registry;
use sluice::pipeline::job;
use sluice::retrain::{self, RetrainOptions};

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

/// `rows` short labelled reviews of the train split as the sentiment pipeline's Parquet.
fn feedback_dataset(dir: &Path, rows: usize) {
    let all = reviews::load(&Path::new(ROOT).join("data/reviews.jsonl"), "train")
        .unwrap_or_else(|e| panic!("{e}"));
    let short: Vec<_> = all
        .into_iter()
        .filter(|r| r.text.split_whitespace().count() <= 14)
        .take(rows)
        .collect();
    assert_eq!(
        short.len(),
        rows,
        "enough short reviews in data/reviews.jsonl"
    );
    let now = chrono::Utc::now().timestamp_millis();
    let schema = Arc::new(Schema::new(vec![
        Field::new("id", DataType::Utf8, false),
        Field::new("_timestamp", DataType::Int64, false),
        Field::new("text", DataType::Utf8, false),
        Field::new("rating", DataType::Int64, false),
    ]));
    let columns: Vec<ArrayRef> = vec![
        Arc::new(StringArray::from_iter_values(
            short.iter().map(|r| r.id.as_str()),
        )),
        Arc::new(Int64Array::from_iter_values(
            (0..rows as i64).map(|i| now - 60_000 + i),
        )),
        Arc::new(StringArray::from_iter_values(
            short.iter().map(|r| r.text.as_str()),
        )),
        Arc::new(Int64Array::from_iter_values(
            short.iter().map(|r| i64::from(r.rating)),
        )),
    ];
    let batch = RecordBatch::try_new(schema.clone(), columns).unwrap();
    let part = dir.join("feedback/date=2026-12-01");
    std::fs::create_dir_all(&part).unwrap();
    let file = std::fs::File::create(part.join("part-0.parquet")).unwrap();
    let mut writer = parquet::arrow::ArrowWriter::try_new(file, schema, None).unwrap();
    writer.write(&batch).unwrap();
    writer.close().unwrap();
}

#[test]
fn fine_tuning_trains_the_whole_encoder_exports_matching_onnx_and_the_gate_refuses_worse() {
    let models = Path::new(ROOT).join("models");
    assert!(
        models.join("minilm-l6/current").is_file(),
        "models/ is missing: run scripts/setup.sh first"
    );
    let registry_dir = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink(
        models.join("minilm-l6"),
        registry_dir.path().join("minilm-l6"),
    )
    .unwrap();
    let out = tempfile::tempdir().unwrap();
    feedback_dataset(out.path(), 160);
    let vars = |name: &str| match name {
        "SLUICE_OUT" => Some(out.path().display().to_string()),
        "SLUICE_MODELS" => Some(registry_dir.path().display().to_string()),
        "SLUICE_FINETUNE_EPOCHS" => Some("2".into()),
        _ => None,
    };
    let job_file = Path::new(ROOT).join("pipelines/retrain-sentiment-tuned.yaml");
    let mut loaded = job::load(&job_file, &vars).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(loaded.job.trainer.epochs, 2);
    // Few rows and steps: a larger step size for the head than the shipped job's.
    loaded.job.trainer.learning_rate = 0.01;
    loaded.job.trainer.fine_tune.as_mut().unwrap().max_len = 32;

    let mut losses = Vec::new();
    let report = retrain::run(&loaded, &RetrainOptions::default(), |_, _, loss| {
        losses.push(loss)
    })
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(losses.len(), 2);
    assert!(
        losses[1] < losses[0],
        "the loss decreases over the epochs: {losses:?}"
    );
    assert!(
        report.onnx_max_abs_diff <= 1e-4,
        "ONNX Runtime vs the trainer: {}",
        report.onnx_max_abs_diff
    );
    assert_eq!(
        report.published.as_deref(),
        Some("sentiment-tuned/1"),
        "{report}"
    );
    assert!(report.candidate.accuracy > 0.6, "{report}");

    // Published with its tokenizer, taking token ids: what the tokenize + infer stages feed.
    let registry = Registry::new(registry_dir.path());
    let version = registry.current("sentiment-tuned").unwrap();
    assert!(version.dir.join("tokenizer.json").is_file());
    let manifest = registry.manifest(&version).unwrap();
    let inputs: Vec<&str> = manifest.inputs.iter().map(|i| i.name.as_str()).collect();
    assert_eq!(inputs, ["input_ids", "attention_mask", "token_type_ids"]);
    assert!(manifest.outputs.iter().any(|o| o.name == "probabilities"));
    let profile = manifest.profile.expect("a reference profile");
    let tokens = profile.tokens.expect("a token-count profile");
    assert_eq!(tokens.edges.len(), 9);
    assert!((tokens.shares.iter().sum::<f64>() - 1.0).abs() < 1e-9);
    // The pipeline that serves it validates against it (tokenizer, inputs, outputs).
    let serving = Path::new(ROOT).join("pipelines/tuned/sentiment-tuned.yaml");
    sluice::pipeline::load_with_vars(&serving, &vars).unwrap_or_else(|e| panic!("{e}"));

    // A worse candidate (no epoch: a zero head gives 50/50 everywhere) is compared
    // with version 1 on the same holdout texts and refused.
    let mut worse = loaded.clone();
    worse.job.trainer.epochs = 0;
    let rejected = retrain::run(&worse, &RetrainOptions::default(), |_, _, _| {})
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(rejected.published, None, "{rejected}");
    let (compared, current) = rejected.current.clone().expect("compared with version 1");
    assert_eq!(compared, "sentiment-tuned/1");
    assert!(
        current.macro_f1 > rejected.candidate.macro_f1 + 0.005,
        "{rejected}"
    );
    assert_eq!(registry.current("sentiment-tuned").unwrap().version, "1");
}

//! Inference end to end with the real models (built by `scripts/setup.sh`) and real ONNX
//! Runtime: tokenizer/encoder parity with the numpy reference, golden labels through the
//! whole sentiment pipeline on the mock cluster, a hot swap under a running stream (and a
//! corrupt version rejected while the old one serves), and the CUDA device choice on a
//! machine without a GPU.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use arrow::array::{Array, AsArray, RecordBatch};
use arrow::datatypes::{Float32Type, Int64Type};
use rdkafka::mocking::MockCluster;

use crate::common::*;
use sluice::batch::{Batch, BatchId, RawBatch, TopicPartition};
use sluice::config::{self, UnknownFields};
use sluice::decode::JsonDecoder;
use sluice::demo::feeds::feedback::{produce, SampleRecord};
use sluice::model::{Manifest, Registry};
use sluice::pipeline::Pipeline;
use sluice::stage::Chain;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

fn models() -> PathBuf {
    let models = Path::new(ROOT).join("models");
    assert!(
        models.join("minilm-l6/current").is_file()
            && models.join("sentiment-head/current").is_file(),
        "models/ is missing: run scripts/setup.sh first"
    );
    models
}

/// Loads `pipelines/sentiment.yaml` against `brokers`, writing under `out`.
fn sentiment(brokers: &str, out: &Path, models: &Path) -> Pipeline {
    let vars: HashMap<&str, String> = HashMap::from([
        ("SLUICE_BROKERS", brokers.to_owned()),
        ("SLUICE_OUT", out.display().to_string()),
        ("SLUICE_MODELS", models.display().to_string()),
        ("SLUICE_DEVICE", "cpu".to_owned()),
    ]);
    sluice::pipeline::load_with_vars(&Path::new(ROOT).join("pipelines/sentiment.yaml"), &|name| {
        vars.get(name).cloned()
    })
    .unwrap_or_else(|e| panic!("{e}"))
}

/// A pipeline file with the given `stages:` block (YAML, indented two spaces).
fn pipeline_with_stages(dir: &Path, stages: &str) -> Result<Pipeline, config::ConfigError> {
    let text = format!(
        "name: stages\nsource:\n  kafka:\n    brokers: localhost:1\n    topics: [t]\ndecode:\n  schema: {SCHEMA}\nmodels: {models}\nstages:\n{stages}sinks:\n  - parquet:\n      path: {out}/rows\ndead_letter:\n  parquet:\n    path: {out}/dead\n",
        models = models().display(),
        out = dir.display()
    );
    let path = dir.join("stages.yaml");
    std::fs::write(&path, text).unwrap();
    sluice::pipeline::load(&path)
}

/// A decoded batch of feedback records with these texts.
fn feedback_batch(pipeline: &Pipeline, texts: &[&str]) -> Batch {
    let mut raw = RawBatch::new(BatchId(1), TopicPartition::new("t", 0), texts.len());
    for (i, text) in texts.iter().enumerate() {
        let json =
            serde_json::json!({"id": format!("r{i}"), "customer_id": "c-0001", "text": text});
        raw.push(
            i as i64,
            Some(1_795_305_600_000),
            None,
            Some(json.to_string().as_bytes()),
        );
    }
    JsonDecoder::new(
        pipeline.record_schema.clone(),
        1 << 20,
        UnknownFields::Ignore,
    )
    .decode(&raw)
    .unwrap()
}

fn vectors(batch: &RecordBatch, column: &str) -> Vec<Vec<f32>> {
    let list = batch.column_by_name(column).unwrap().as_fixed_size_list();
    (0..list.len())
        .map(|i| {
            list.value(i)
                .as_primitive::<Float32Type>()
                .values()
                .to_vec()
        })
        .collect()
}

#[derive(serde::Deserialize)]
struct Reference {
    sentences: Vec<String>,
    input_ids: Vec<Vec<i64>>,
    sentence_embedding: Vec<Vec<f32>>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokenizer_and_encoder_match_the_numpy_reference() {
    let registry = Registry::new(models());
    let version = registry.current("minilm-l6").unwrap();
    let reference: Reference =
        serde_json::from_str(&std::fs::read_to_string(version.dir.join("reference.json")).unwrap())
            .unwrap();
    let texts: Vec<&str> = reference.sentences.iter().map(String::as_str).collect();
    let dir = tempfile::tempdir().unwrap();

    // One run fed straight from the Arrow buffers; then runs of 2 rows, sorted by length,
    // gathered and trimmed: both must give the reference embeddings.
    for batching in [
        "max_batch: 64",
        "max_batch: 2\n      sort_by_length_of: attention_mask",
    ] {
        let stages = format!(
            "  - tokenize: {{input: text, tokenizer: minilm-l6}}\n  - infer:\n      model: minilm-l6\n      device: cpu\n      inputs: {{input_ids: input_ids, attention_mask: attention_mask, token_type_ids: token_type_ids}}\n      outputs: {{sentence_embedding: embedding}}\n      {batching}\n"
        );
        let pipeline = pipeline_with_stages(dir.path(), &stages).unwrap_or_else(|e| panic!("{e}"));
        let chain = Chain::build(&pipeline.stages).await.unwrap();
        let out = chain
            .process(feedback_batch(&pipeline, &texts))
            .await
            .unwrap();
        assert!(out.dead_letters.is_empty());

        let ids = out
            .rows
            .column_by_name("input_ids")
            .unwrap()
            .as_list::<i32>();
        let mask = out
            .rows
            .column_by_name("attention_mask")
            .unwrap()
            .as_list::<i32>();
        let longest = reference.input_ids.iter().map(Vec::len).max().unwrap();
        for (row, expected) in reference.input_ids.iter().enumerate() {
            let got = ids.value(row);
            let got = got.as_primitive::<Int64Type>().values();
            assert_eq!(got.len(), longest, "padded to the batch's longest row");
            assert_eq!(
                &got[..expected.len()],
                &expected[..],
                "token ids of {:?}",
                texts[row]
            );
            assert!(got[expected.len()..].iter().all(|&t| t == 0));
            let m = mask.value(row);
            assert_eq!(
                m.as_primitive::<Int64Type>().values().iter().sum::<i64>() as usize,
                expected.len()
            );
        }
        let embeddings = vectors(&out.rows, "embedding");
        let mut worst = 0.0_f32;
        for (got, want) in embeddings.iter().zip(&reference.sentence_embedding) {
            for (g, w) in got.iter().zip(want) {
                worst = worst.max((g - w).abs());
            }
        }
        assert!(worst < 1e-4, "max abs diff {worst} ({batching})");
        let versions = out
            .rows
            .column_by_name("model_version")
            .unwrap()
            .as_string::<i32>();
        assert!(versions.iter().all(|v| v == Some(version.label().as_str())));
    }
}

/// `cpu_model`: on the CPU the int8 encoder serves in place of the fp32 one, and every
/// row says so; its embeddings stay close to the fp32 reference.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_the_cpu_the_cpu_model_serves_and_every_row_names_it() {
    let registry = Registry::new(models());
    let fp32 = registry.current("minilm-l6").unwrap();
    let reference: Reference =
        serde_json::from_str(&std::fs::read_to_string(fp32.dir.join("reference.json")).unwrap())
            .unwrap();
    let texts: Vec<&str> = reference.sentences.iter().map(String::as_str).collect();
    let dir = tempfile::tempdir().unwrap();
    let stages = "  - tokenize: {input: text, tokenizer: minilm-l6}\n  - infer:\n      model: minilm-l6\n      cpu_model: minilm-l6-int8\n      device: cpu\n      inputs: {input_ids: input_ids, attention_mask: attention_mask, token_type_ids: token_type_ids}\n      outputs: {sentence_embedding: embedding}\n";
    let pipeline = pipeline_with_stages(dir.path(), stages).unwrap_or_else(|e| panic!("{e}"));
    let chain = Chain::build(&pipeline.stages).await.unwrap();
    let out = chain
        .process(feedback_batch(&pipeline, &texts))
        .await
        .unwrap();
    let int8 = registry.current("minilm-l6-int8").unwrap();
    let versions = out
        .rows
        .column_by_name("model_version")
        .unwrap()
        .as_string::<i32>();
    assert!(versions.iter().all(|v| v == Some(int8.label().as_str())));
    for (got, want) in vectors(&out.rows, "embedding")
        .iter()
        .zip(&reference.sentence_embedding)
    {
        let dot: f32 = got.iter().zip(want).map(|(a, b)| a * b).sum();
        assert!(
            dot > 0.95,
            "cosine {dot} to the fp32 embedding (both unit length)"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stage_mistakes_are_config_errors_with_key_paths() {
    let dir = tempfile::tempdir().unwrap();
    let bad = [
        ("  - tokenize: {input: nope, tokenizer: minilm-l6}\n", "stages[0].tokenize.input", "unknown column `nope`"),
        ("  - tokenize: {input: text, tokenizer: missing-model}\n", "stages[0].tokenize.tokenizer", "scripts/setup.sh"),
        (
            "  - tokenize: {input: text, tokenizer: minilm-l6}\n  - infer: {model: minilm-l6, inputs: {input_ids: input_ids, attention_mask: attention_mask}, outputs: {sentence_embedding: e}}\n",
            "stages[1].infer.inputs",
            "model input `token_type_ids` is not mapped",
        ),
        (
            "  - infer: {model: sentiment-head, inputs: {embedding: text}, outputs: {probabilities: p}}\n",
            "stages[0].infer.inputs.embedding",
            "cannot feed model input `embedding`",
        ),
        (
            "  - tokenize: {input: text, tokenizer: minilm-l6}\n  - infer: {model: minilm-l6, cpu_model: sentiment-head, inputs: {input_ids: input_ids, attention_mask: attention_mask, token_type_ids: token_type_ids}, outputs: {sentence_embedding: e}}\n",
            "stages[1].infer.cpu_model",
            "must take the same inputs and give the same outputs as `minilm-l6`",
        ),
        (
            "  - enrich: {derive: [{max: {input: rating, output: m}}]}\n",
            "stages[0].enrich.derive[0].input",
            "expected a vector of floats",
        ),
    ];
    for (stages, path, message) in bad {
        let err = pipeline_with_stages(dir.path(), stages).expect_err(stages);
        let issue = err
            .issues
            .iter()
            .find(|i| i.path == path)
            .unwrap_or_else(|| panic!("no issue at {path}: {err}"));
        assert!(issue.message.contains(message), "{path}: {}", issue.message);
        assert!(issue.line.is_some(), "{path} has a line");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn device_cuda_without_a_gpu_fails_clearly_and_auto_falls_back_to_the_cpu() {
    let gpu_library = Path::new(ROOT).join(".tools/onnxruntime-gpu");
    if gpu_library.exists() {
        eprintln!(
            "skipped: this machine has the GPU build of ONNX Runtime ({})",
            gpu_library.display()
        );
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let encoder = |device: &str| {
        format!("  - tokenize: {{input: text, tokenizer: minilm-l6}}\n  - infer: {{model: minilm-l6, device: {device}, inputs: {{input_ids: input_ids, attention_mask: attention_mask, token_type_ids: token_type_ids}}, outputs: {{sentence_embedding: embedding}}}}\n")
    };
    let cuda = pipeline_with_stages(dir.path(), &encoder("cuda")).unwrap();
    let err = Chain::build(&cuda.stages)
        .await
        .err()
        .expect("device: cuda must fail without a CUDA provider");
    let text = err.to_string();
    assert!(text.contains("device: cuda"), "{text}");
    assert!(text.contains("no CUDA execution provider"), "{text}");
    assert!(text.contains("scripts/setup.sh --gpu"), "{text}");

    let auto = pipeline_with_stages(dir.path(), &encoder("auto")).unwrap();
    let chain = Chain::build(&auto.stages)
        .await
        .expect("device: auto falls back to the CPU");
    let out = chain
        .process(feedback_batch(&auto, &["it still runs"]))
        .await
        .unwrap();
    assert_eq!(out.rows.num_rows(), 1);
}

const GOLDEN: &[(&str, &str)] = &[
    (
        "I love this product, it works perfectly and the support team was wonderful.",
        "positive",
    ),
    (
        "Absolutely fantastic service, thank you so much!",
        "positive",
    ),
    (
        "Great value for the money, I am very happy with it.",
        "positive",
    ),
    (
        "This is the worst purchase I have ever made, a total waste of money.",
        "negative",
    ),
    (
        "Terrible support, nobody answered and the app keeps crashing.",
        "negative",
    ),
    (
        "I hate it. It arrived broken and the refund never came.",
        "negative",
    ),
];

fn feedback(id: &str, customer: &str, text: &str, offset_ms: i64) -> SampleRecord {
    let json = serde_json::json!({"id": id, "customer_id": customer, "text": text, "rating": 3, "ts": "2026-11-22T10:00:00Z"});
    SampleRecord {
        key: id.to_owned(),
        payload: json.to_string().into_bytes(),
        timestamp_ms: 1_795_305_600_000 + offset_ms,
        well_formed: !text.is_empty(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn golden_sentences_get_their_labels_through_the_whole_sentiment_pipeline() {
    let cluster = MockCluster::new(1).unwrap();
    cluster.create_topic("customer-feedback", 2, 1).unwrap();
    let brokers = cluster.bootstrap_servers();
    let mut records: Vec<SampleRecord> = GOLDEN
        .iter()
        .enumerate()
        .map(|(i, (text, _))| feedback(&format!("g{i}"), "c-0001", text, i as i64))
        .collect();
    records.push(feedback("empty", "c-0002", "", 10));
    records.push(SampleRecord {
        key: "torn".into(),
        payload: br#"{"id":"torn","text":"half a rec"#.to_vec(),
        timestamp_ms: 1_795_305_600_011,
        well_formed: false,
    });
    produce(&brokers, "customer-feedback", records.clone())
        .await
        .unwrap();

    let out = tempfile::tempdir().unwrap();
    let pipeline = sentiment(&brokers, out.path(), &models());
    let Running {
        stats,
        shutdown,
        handle: running,
        stop_on_panic: _stop_on_panic,
    } = spawn_pipeline(pipeline);
    assert!(
        eventually(Duration::from_secs(90), || stats.snapshot().records_in
            == records.len() as u64)
        .await
    );
    shutdown.cancel();
    let summary = running.await.unwrap().unwrap();
    assert_eq!((summary.rows_decoded, summary.dead_letters), (6, 2));

    // Parquet: the expected label for each sentence, a unit-length embedding, the lookup.
    let rows = read_dataset(&out.path().join("feedback"));
    let mut seen = 0;
    for batch in &rows {
        let ids = batch.column_by_name("id").unwrap().as_string::<i32>();
        let labels = batch.column_by_name("label").unwrap().as_string::<i32>();
        let scores = batch
            .column_by_name("score")
            .unwrap()
            .as_primitive::<Float32Type>();
        let segments = batch.column_by_name("segment").unwrap().as_string::<i32>();
        let versions = batch
            .column_by_name("model_version")
            .unwrap()
            .as_string::<i32>();
        let embeddings = vectors(batch, "embedding");
        assert!(
            batch.column_by_name("input_ids").is_none(),
            "token columns are not written"
        );
        for (row, embedding) in embeddings.iter().enumerate() {
            let index: usize = ids.value(row)[1..].parse().unwrap();
            assert_eq!(labels.value(row), GOLDEN[index].1, "{:?}", GOLDEN[index].0);
            assert!(scores.value(row) > 0.5 && scores.value(row) <= 1.0);
            assert_eq!(
                (segments.value(row), versions.value(row)),
                ("smb", "sentiment-head/1")
            );
            let norm: f32 = embedding.iter().map(|v| v * v).sum::<f32>().sqrt();
            assert_eq!(embedding.len(), 384);
            assert!((norm - 1.0).abs() < 1e-4, "embedding norm {norm}");
            seen += 1;
        }
    }
    assert_eq!(seen, GOLDEN.len());

    // The output topic: id, label, score, model_version per row.
    let messages = read_topic(
        &brokers,
        "feedback-sentiment",
        GOLDEN.len(),
        Duration::from_secs(10),
    );
    assert_eq!(messages.len(), GOLDEN.len());
    for message in &messages {
        let value: serde_json::Value = serde_json::from_slice(&message.payload).unwrap();
        let index: usize = value["id"].as_str().unwrap()[1..].parse().unwrap();
        assert_eq!(value["label"], GOLDEN[index].1);
        assert_eq!(value["model_version"], "sentiment-head/1");
        assert_eq!(value.as_object().unwrap().len(), 4, "{value}");
    }

    // Dead letters: the torn record at decode, the empty text at tokenize.
    let dead = read_dataset(&out.path().join("dead_letters"));
    let mut reasons: Vec<(String, String)> = dead
        .iter()
        .flat_map(|b| {
            let stage = b
                .column_by_name("stage")
                .unwrap()
                .as_string::<i32>()
                .clone();
            let reason = b
                .column_by_name("reason")
                .unwrap()
                .as_string::<i32>()
                .clone();
            (0..b.num_rows()).map(move |i| (stage.value(i).to_owned(), reason.value(i).to_owned()))
        })
        .collect();
    reasons.sort();
    assert_eq!(reasons.len(), 2);
    assert_eq!(reasons[0].0, "decode");
    assert_eq!(
        reasons[1],
        ("stages[0].tokenize".to_owned(), "text is empty".to_owned())
    );
}

/// A registry for one test: the encoders linked from models/, the head copied (version 1).
fn private_registry(dir: &Path) -> Registry {
    let models = models();
    for encoder in ["minilm-l6", "minilm-l6-int8"] {
        std::os::unix::fs::symlink(models.join(encoder), dir.join(encoder)).unwrap();
    }
    let shipped = Registry::new(&models);
    let head = shipped.current("sentiment-head").unwrap();
    let registry = Registry::new(dir);
    let manifest = shipped.manifest(&head).unwrap();
    registry
        .publish(&head.model_path(), manifest, &[], true)
        .unwrap();
    registry
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_version_is_swapped_in_under_a_running_stream_and_a_corrupt_one_is_rejected() {
    let cluster = MockCluster::new(1).unwrap();
    cluster.create_topic("customer-feedback", 2, 1).unwrap();
    let brokers = cluster.bootstrap_servers();
    let registry_dir = tempfile::tempdir().unwrap();
    let registry = private_registry(registry_dir.path());
    let out = tempfile::tempdir().unwrap();
    let pipeline = sentiment(&brokers, out.path(), registry_dir.path());
    let Running {
        stats,
        shutdown,
        handle: running,
        stop_on_panic: _stop_on_panic,
    } = spawn_pipeline(pipeline);
    let wave = |name: &str, n: usize| -> Vec<SampleRecord> {
        (0..n)
            .map(|i| {
                feedback(
                    &format!("{name}-{i:03}"),
                    "c-0003",
                    GOLDEN[i % GOLDEN.len()].0,
                    i as i64,
                )
            })
            .collect()
    };
    let rows_written = || stats.snapshot().rows_decoded;

    // Wave 1 on version 1.
    produce(&brokers, "customer-feedback", wave("one", 60))
        .await
        .unwrap();
    assert!(eventually(Duration::from_secs(90), || rows_written() == 60).await);

    // Version 2 published while wave 2 streams in.
    let head = registry.current("sentiment-head").unwrap();
    let manifest: Manifest = registry.manifest(&head).unwrap();
    let producing = tokio::spawn({
        let brokers = brokers.clone();
        let records = wave("two", 200);
        async move { produce(&brokers, "customer-feedback", records).await }
    });
    let v2 = registry
        .publish(&head.model_path(), manifest.clone(), &[], true)
        .unwrap();
    producing.await.unwrap().unwrap();
    assert!(eventually(Duration::from_secs(90), || rows_written() == 260).await);
    // Probe until a new record comes out on version 2 (the watcher polls every second).
    let mut written = 260;
    let mut swapped = false;
    for attempt in 0..60 {
        let probe = format!("probe-{attempt:03}");
        let record = feedback(&probe, "c-0003", GOLDEN[0].0, 0);
        produce(&brokers, "customer-feedback", [record])
            .await
            .unwrap();
        written += 1;
        assert!(eventually(Duration::from_secs(30), || rows_written() == written).await);
        let out = read_topic(
            &brokers,
            "feedback-sentiment",
            written as usize,
            Duration::from_secs(10),
        );
        let version = out.iter().find_map(|m| {
            let value: serde_json::Value = serde_json::from_slice(&m.payload).ok()?;
            (value["id"] == probe.as_str())
                .then(|| value["model_version"].as_str().map(str::to_owned))?
        });
        if version.as_deref() == Some(v2.label().as_str()) {
            swapped = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert!(swapped, "version 2 was never swapped in");

    // Version 3 is corrupt: it must be rejected, version 2 keeps serving wave 3.
    let corrupt = registry_dir.path().join("corrupt.onnx");
    std::fs::write(&corrupt, b"this is not an ONNX model").unwrap();
    let v3 = registry.publish(&corrupt, manifest, &[], true).unwrap();
    let refused = eventually(Duration::from_secs(30), || {
        stats.rejected_version("stages[2].infer", &v3.version)
    })
    .await;
    assert!(refused, "the watcher refused the corrupt version");
    produce(&brokers, "customer-feedback", wave("three", 60))
        .await
        .unwrap();
    assert!(eventually(Duration::from_secs(90), || rows_written() == written + 60).await);
    shutdown.cancel();
    let summary = running
        .await
        .unwrap()
        .expect("the pipeline ran through both swaps");
    assert_eq!(summary.dead_letters, 0, "no batch failed during the swaps");

    let rows = read_dataset(&out.path().join("feedback"));
    let mut versions_by_wave: HashMap<String, HashMap<String, usize>> = HashMap::new();
    for batch in &rows {
        let ids = batch.column_by_name("id").unwrap().as_string::<i32>();
        let versions = batch
            .column_by_name("model_version")
            .unwrap()
            .as_string::<i32>();
        for row in 0..batch.num_rows() {
            let wave = ids.value(row).split('-').next().unwrap().to_owned();
            *versions_by_wave
                .entry(wave)
                .or_default()
                .entry(versions.value(row).to_owned())
                .or_default() += 1;
        }
    }
    let (one, two) = ("sentiment-head/1".to_owned(), v2.label());
    assert_eq!(versions_by_wave["one"], HashMap::from([(one.clone(), 60)]));
    let wave_two = &versions_by_wave["two"];
    assert_eq!(wave_two.values().sum::<usize>(), 200);
    assert!(
        wave_two.keys().all(|v| *v == one || *v == two),
        "{wave_two:?}"
    );
    assert_eq!(
        versions_by_wave["three"],
        HashMap::from([(two.clone(), 60)]),
        "corrupt {} rejected",
        v3.label()
    );
    assert_eq!(
        registry.current("sentiment-head").unwrap().label(),
        v3.label()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_whose_every_row_is_rejected_still_leaves_with_the_output_schema() {
    let dir = tempfile::tempdir().unwrap();
    let stages = "  - tokenize: {input: text, tokenizer: minilm-l6}\n  - infer: {model: minilm-l6, device: cpu, inputs: {input_ids: input_ids, attention_mask: attention_mask, token_type_ids: token_type_ids}, outputs: {sentence_embedding: embedding}}\n";
    let pipeline = pipeline_with_stages(dir.path(), stages).unwrap();
    let chain = Chain::build(&pipeline.stages).await.unwrap();
    // Every text empty: tokenize rejects all rows.
    let out = chain
        .process(feedback_batch(&pipeline, &["", "   "]))
        .await
        .unwrap();
    assert_eq!((out.rows.num_rows(), out.dead_letters.len()), (0, 2));
    assert_eq!(out.rows.schema(), *pipeline.output_schema());
    assert!(out
        .dead_letters
        .iter()
        .all(|d| d.stage == "stages[0].tokenize"));
    // Nothing decodes: the batch reaches the stages empty.
    let mut raw = RawBatch::new(BatchId(2), TopicPartition::new("t", 0), 1);
    raw.push(0, None, None, Some(b"{not json"));
    let decoded = JsonDecoder::new(
        pipeline.record_schema.clone(),
        1 << 20,
        UnknownFields::Ignore,
    )
    .decode(&raw)
    .unwrap();
    let out = chain.process(decoded).await.unwrap();
    assert_eq!(out.rows.schema(), *pipeline.output_schema());
    assert_eq!(out.dead_letters.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_row_the_model_fails_on_is_rejected_and_the_others_still_get_results() {
    use arrow::array::{ArrayRef, Int64Array, ListArray};
    use sluice::config::StageConfig;
    use sluice::stage::infer::InferStage;

    let dir = tempfile::tempdir().unwrap();
    let stages = "  - tokenize: {input: text, tokenizer: minilm-l6}\n  - infer: {model: minilm-l6, device: cpu, max_batch: 8, inputs: {input_ids: input_ids, attention_mask: attention_mask, token_type_ids: token_type_ids}, outputs: {sentence_embedding: embedding}}\n";
    let pipeline = pipeline_with_stages(dir.path(), stages).unwrap();
    let StageConfig::Infer(infer_config) = &pipeline.config.stages[1] else {
        panic!("second stage is infer")
    };
    let texts = ["first review", "second review", "third review"];
    let tokenized = {
        let tokenize_only =
            pipeline_with_stages(dir.path(), &stages[..stages.find("  - infer").unwrap()]).unwrap();
        Chain::build(&tokenize_only.stages)
            .await
            .unwrap()
            .process(feedback_batch(&tokenize_only, &texts))
            .await
            .unwrap()
            .rows
    };
    let infer = InferStage::start(
        "stages[1].infer".into(),
        infer_config,
        &pipeline.stages.context,
        None,
        &pipeline.stages.outputs[0],
        pipeline.stages.outputs[1].clone(),
        &Default::default(),
    )
    .await
    .unwrap();
    let clean = infer.process(tokenized.clone()).await.unwrap();
    assert!(clean.rejected.is_empty());

    // Row 1 gets a token id past the vocabulary: the embedding lookup fails for it alone.
    let ids_index = tokenized.schema().index_of("input_ids").unwrap();
    let ids = tokenized.column(ids_index).as_list::<i32>();
    let mut values = ids.values().as_primitive::<Int64Type>().values().to_vec();
    let row_start = ids.value_offsets()[1] as usize;
    values[row_start + 1] = 9_999_999;
    let poisoned: ArrayRef = Arc::new(ListArray::new(
        Arc::new(arrow::datatypes::Field::new_list_field(
            arrow::datatypes::DataType::Int64,
            false,
        )),
        ids.offsets().clone(),
        Arc::new(Int64Array::from(values)),
        None,
    ));
    let mut columns = tokenized.columns().to_vec();
    columns[ids_index] = poisoned;
    let rows = RecordBatch::try_new(tokenized.schema(), columns).unwrap();
    let out = infer.process(rows).await.unwrap();
    assert_eq!(out.rejected.len(), 1, "{:?}", out.rejected);
    assert_eq!(out.rejected[0].row, 1);
    assert!(
        out.rejected[0].reason.contains("minilm-l6/1 failed"),
        "{}",
        out.rejected[0].reason
    );
    let (good, expected) = (
        vectors(&out.rows, "embedding"),
        vectors(&clean.rows, "embedding"),
    );
    for row in [0, 2] {
        let diff = good[row]
            .iter()
            .zip(&expected[row])
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f32::max);
        assert!(diff < 1e-5, "row {row} differs by {diff}");
    }
}

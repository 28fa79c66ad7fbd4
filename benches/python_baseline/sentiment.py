#!/usr/bin/env python3
"""The Python baseline of the sentiment bench: what pipelines/sentiment.yaml does to each
record (tokenize, MiniLM encoder, sentiment head, label + score, Parquet), written the way
such a job is usually written in Python: HF `tokenizers` with the encoder's own
tokenizer.json, batches of 32 in arrival order padded to the longest row, onnxruntime
with default session options, pyarrow for Parquet.

`--sorted` sorts the whole input by token length first (batches of 32 of similar length):
padding is then nearly gone, which is the bare-ONNX-Runtime limit a streaming job can
approach but not reach (it cannot wait for the whole input).

It reads the JSON-lines file sluice read (scripts/bench_sentiment.sh writes it), so both
sides do the same work; with --compare it checks its labels against the Parquet dataset
sluice wrote. Prints one JSON line (and appends it to --results): {"bench":
"python/sentiment", "records", "seconds", "records_per_s", ...}.
"""

import argparse
import json
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pyarrow as pa
import pyarrow.parquet as pq
from tokenizers import Tokenizer

ROOT = Path(__file__).resolve().parents[2]
BATCH = 32
MAX_LEN = 128


def version_dir(models: Path, name: str) -> Path:
    return models / name / (models / name / "current").read_text().strip()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--input", required=True, type=Path)
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--models", default=ROOT / "models", type=Path)
    parser.add_argument("--encoder", default="minilm-l6")
    parser.add_argument("--sorted", action="store_true", help="sort the whole input by length first")
    parser.add_argument("--compare", type=Path, help="sluice's Parquet dataset of the same records")
    parser.add_argument("--results", type=Path)
    args = parser.parse_args()

    started = time.perf_counter()
    encoder_dir = version_dir(args.models, args.encoder)
    head_dir = version_dir(args.models, "sentiment-head")
    tokenizer = Tokenizer.from_file(str(encoder_dir / "tokenizer.json"))
    tokenizer.enable_truncation(MAX_LEN)
    tokenizer.enable_padding()  # to the longest row of each batch
    encoder = ort.InferenceSession(str(encoder_dir / "model.onnx"), providers=["CPUExecutionProvider"])
    head = ort.InferenceSession(str(head_dir / "model.onnx"), providers=["CPUExecutionProvider"])
    labels = json.loads((head_dir / "manifest.json").read_text())["labels"]
    head_input = head.get_inputs()[0].name
    loaded = time.perf_counter()

    records = [json.loads(line) for line in args.input.open()]
    order = list(range(len(records)))
    if args.sorted:
        lengths = [len(e.ids) for e in Tokenizer.from_file(str(encoder_dir / "tokenizer.json")).encode_batch(
            [r["text"] for r in records])]
        order.sort(key=lambda i: lengths[i])
    ids, label_col, score_col, probs_col, emb_col = [], [], [], [], []
    for start in range(0, len(order), BATCH):
        batch = [records[i] for i in order[start:start + BATCH]]
        encoded = tokenizer.encode_batch([r["text"] for r in batch])
        feeds = {
            "input_ids": np.array([e.ids for e in encoded], dtype=np.int64),
            "attention_mask": np.array([e.attention_mask for e in encoded], dtype=np.int64),
            "token_type_ids": np.array([e.type_ids for e in encoded], dtype=np.int64),
        }
        (embedding,) = encoder.run(["sentence_embedding"], feeds)
        probabilities = head.run(["probabilities"], {head_input: embedding.astype(np.float32)})[0]
        best = probabilities.argmax(axis=1)
        ids.extend(r["id"] for r in batch)
        label_col.extend(labels[i] for i in best)
        score_col.extend(probabilities.max(axis=1).tolist())
        probs_col.extend(probabilities.tolist())
        emb_col.extend(embedding.tolist())
    table = pa.table({
        "id": ids,
        "label": label_col,
        "score": pa.array(score_col, pa.float32()),
        "probabilities": pa.array(probs_col, pa.list_(pa.float32(), len(labels))),
        "embedding": pa.array(emb_col, pa.list_(pa.float32(), 384)),
    })
    args.out.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, args.out, compression="zstd")
    finished = time.perf_counter()

    result = {
        "bench": "python/sentiment" + ("-sorted" if args.sorted else ""),
        "unix_time": int(time.time()),
        "encoder": args.encoder,
        "records": len(records),
        "seconds": finished - started,
        "seconds_after_load": finished - loaded,
        "records_per_s": len(records) / (finished - started),
        "onnxruntime": ort.__version__,
    }
    if args.compare:
        import pyarrow.dataset as ds
        theirs = ds.dataset(args.compare, format="parquet", partitioning="hive").to_table(columns=["id", "label"])
        by_id = dict(zip(theirs["id"].to_pylist(), theirs["label"].to_pylist()))
        same = sum(by_id.get(i) == l for i, l in zip(ids, label_col))
        result["same_label_as_sluice"] = same / max(len(ids), 1)
    line = json.dumps(result)
    print(line)
    if args.results:
        with args.results.open("a") as f:
            f.write(line + "\n")


if __name__ == "__main__":
    main()

"""Train the first sentiment head: logistic regression on frozen MiniLM embeddings.

The head maps the encoder's 384-d `sentence_embedding` to two classes (negative, positive).
Training data: a class-balanced sample of the `train` split of data/reviews.jsonl (Rotten
Tomatoes + tweets); accuracy is measured on a sample of the `holdout` split, per source.
The model is plain softmax regression fitted with full-batch gradient descent + L2 in numpy,
exported as ONNX (MatMul + Add -> `logits`, Softmax -> `probabilities`) and published as
`sentiment-head` into the model registry with its labels and holdout metrics.

Embeddings come from the published `minilm-l6` ONNX model through ONNX Runtime, with the
same tokenizer settings as sluice's tokenize stage.
"""

import argparse
import json
import random
import sys
import tempfile
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

sys.path.insert(0, str(Path(__file__).parent))
import registry  # noqa: E402
from build_encoder import encode_batch, tokenizer  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
LABELS = ["negative", "positive"]


def sample(rows, split, per_source_per_class, seed):
    rng = random.Random(seed)
    picked = []
    for source in sorted({r["source"] for r in rows}):
        for label in LABELS:
            pool = [r for r in rows if r["split"] == split and r["source"] == source and r["label"] == label]
            rng.shuffle(pool)
            picked += pool[:per_source_per_class]
    return picked


def embed(session, tok, texts, batch=64):
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    out = np.zeros((len(texts), 384), dtype=np.float32)
    for start in range(0, len(order), batch):
        idx = order[start:start + batch]
        ids, mask, types = encode_batch(tok, [texts[i] for i in idx])
        out[idx] = session.run(["sentence_embedding"], {"input_ids": ids, "attention_mask": mask, "token_type_ids": types})[0]
    return out


def fit(x, y, classes, l2=1e-3, lr=2.0, epochs=1500):
    w = np.zeros((x.shape[1], classes), dtype=np.float64)
    b = np.zeros(classes, dtype=np.float64)
    onehot = np.eye(classes)[y]
    for _ in range(epochs):
        z = x @ w + b
        p = np.exp(z - z.max(1, keepdims=True))
        p /= p.sum(1, keepdims=True)
        grad = p - onehot
        w -= lr * (x.T @ grad / len(x) + l2 * w)
        b -= lr * grad.mean(0)
    return w.astype(np.float32), b.astype(np.float32)


def export(w, b, path):
    nodes = [
        helper.make_node("MatMul", ["embedding", "weight"], ["scores"]),
        helper.make_node("Add", ["scores", "bias"], ["logits"]),
        helper.make_node("Softmax", ["logits"], ["probabilities"], axis=-1),
    ]
    graph = helper.make_graph(
        nodes, "sentiment-head",
        [helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["batch", w.shape[0]])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", w.shape[1]]),
         helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["batch", w.shape[1]])],
        [numpy_helper.from_array(w, "weight"), numpy_helper.from_array(b, "bias")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="sluice/scripts/models/train_head.py")
    model.ir_version = 8
    helper.set_model_props(model, {"labels": json.dumps(LABELS)})
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--registry", default=str(ROOT / "models"))
    parser.add_argument("--train-per-class", type=int, default=1500, help="train rows per source and class")
    parser.add_argument("--holdout-per-class", type=int, default=400, help="holdout rows per source and class")
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()

    import onnxruntime as ort

    rows = [json.loads(line) for line in open(ROOT / "data" / "reviews.jsonl", encoding="utf-8")]
    train = sample(rows, "train", args.train_per_class, args.seed)
    holdout = sample(rows, "holdout", args.holdout_per_class, args.seed)
    encoder = Path(args.registry) / "minilm-l6" / registry.current(args.registry, "minilm-l6") / "model.onnx"
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    session = ort.InferenceSession(str(encoder), opts, providers=["CPUExecutionProvider"])
    tok = tokenizer()
    print(f"head: embedding {len(train)} train + {len(holdout)} holdout texts with {encoder.relative_to(ROOT)}", flush=True)
    x_train = embed(session, tok, [r["text"] for r in train])
    x_hold = embed(session, tok, [r["text"] for r in holdout])
    y_train = np.array([LABELS.index(r["label"]) for r in train])
    y_hold = np.array([LABELS.index(r["label"]) for r in holdout])

    w, b = fit(x_train.astype(np.float64), y_train, len(LABELS))
    predicted = (x_hold @ w + b).argmax(1)
    metrics = {"holdout_accuracy": float((predicted == y_hold).mean()), "train_rows": len(train), "holdout_rows": len(holdout)}
    for source in sorted({r["source"] for r in holdout}):
        mask = np.array([r["source"] == source for r in holdout])
        metrics[f"holdout_accuracy_{source}"] = float((predicted[mask] == y_hold[mask]).mean())
    print("head: " + ", ".join(f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}" for k, v in metrics.items()))

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.onnx"
        export(w, b, path)
        check = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        onnx_pred = check.run(["logits"], {"embedding": x_hold})[0].argmax(1)
        if not (onnx_pred == predicted).all():
            sys.exit("head: ONNX predictions differ from numpy; not publishing")
        version = registry.publish(args.registry, "sentiment-head", path, labels=LABELS, metrics=metrics,
                                   description="logistic regression on MiniLM embeddings (Rotten Tomatoes + tweets)")
    print(f"head: published sentiment-head version {version}")


if __name__ == "__main__":
    main()

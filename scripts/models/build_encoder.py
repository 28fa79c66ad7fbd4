"""Build the all-MiniLM-L6-v2 sentence encoder as ONNX from its safetensors weights.

No torch: the BERT graph (embeddings, 6 encoder layers, mean pooling, L2 norm) is written
with the `onnx` helper API, and a numpy implementation of the same maths is the reference.
The script refuses to publish when ONNX Runtime's output differs from numpy by 1e-4 or more.

    inputs   input_ids, attention_mask, token_type_ids   int64 [batch, seq]
    output   sentence_embedding                          float32 [batch, 384], unit length

Publishes `minilm-l6` (fp32) and, with --int8, `minilm-l6-int8` (ORT dynamic quantization,
per-channel int8 weights) into the model registry. It also writes
`reference.json` beside the fp32 model: sentences, token ids and the numpy embeddings, which
the Rust parity test (tests/inference.rs) compares sluice's tokenize + infer stages against.
"""

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from safetensors.numpy import load_file
from tokenizers import Tokenizer

sys.path.insert(0, str(Path(__file__).parent))
import registry  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
WEIGHTS = ROOT / ".tools" / "minilm-l6-v2"

PARITY_SENTENCES = [
    "The delivery was fast and the product works perfectly.",
    "Terrible support, I waited two weeks and nobody answered my emails.",
    "ok",
    "An uneven, overlong film that still has a few moments of real charm and wit.",
    "Ünïcödé, emojis 😀 and punctuation!!! — all in one line; does it tokenize the same way?",
]


class Config:
    def __init__(self, path):
        cfg = json.loads(path.read_text())
        self.hidden = cfg["hidden_size"]
        self.heads = cfg["num_attention_heads"]
        self.layers = cfg["num_hidden_layers"]
        self.eps = cfg["layer_norm_eps"]
        self.head_dim = self.hidden // self.heads


def tokenizer():
    tok = Tokenizer.from_file(str(WEIGHTS / "tokenizer.json"))
    tok.no_padding()
    tok.enable_truncation(max_length=128)
    return tok


def encode_batch(tok, sentences):
    """Token ids padded to the longest row, as sluice's tokenize stage does."""
    encodings = tok.encode_batch(sentences)
    seq = max(len(e.ids) for e in encodings)
    ids = np.zeros((len(sentences), seq), dtype=np.int64)
    mask = np.zeros_like(ids)
    types = np.zeros_like(ids)
    for row, e in enumerate(encodings):
        n = len(e.ids)
        ids[row, :n] = e.ids
        mask[row, :n] = e.attention_mask
        types[row, :n] = e.type_ids
    return ids, mask, types


# ---------------------------------------------------------------- numpy reference


def layer_norm(x, w, b, eps):
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    return (x - mean) / np.sqrt(var + eps) * w + b


def gelu(x):
    from math import erf, sqrt

    verf = np.vectorize(erf, otypes=[np.float64])
    return 0.5 * x * (1.0 + verf(x / sqrt(2.0)))


def reference(w, cfg, ids, mask, types):
    """The encoder in float64 numpy: the ground truth the ONNX graph must match."""
    w = {k: v.astype(np.float64) for k, v in w.items() if v.dtype == np.float32}
    batch, seq = ids.shape
    x = w["embeddings.word_embeddings.weight"][ids]
    x = x + w["embeddings.position_embeddings.weight"][np.arange(seq)][None]
    x = x + w["embeddings.token_type_embeddings.weight"][types]
    x = layer_norm(x, w["embeddings.LayerNorm.weight"], w["embeddings.LayerNorm.bias"], cfg.eps)
    bias = (1.0 - mask[:, None, None, :]) * -10000.0
    for i in range(cfg.layers):
        p = f"encoder.layer.{i}."

        def dense(t, name):
            return t @ w[p + name + ".weight"].T + w[p + name + ".bias"]

        def split(t):
            return t.reshape(batch, seq, cfg.heads, cfg.head_dim).transpose(0, 2, 1, 3)

        q, k, v = (split(dense(x, f"attention.self.{n}")) for n in ("query", "key", "value"))
        scores = q @ k.transpose(0, 1, 3, 2) / np.sqrt(cfg.head_dim) + bias
        scores = np.exp(scores - scores.max(-1, keepdims=True))
        probs = scores / scores.sum(-1, keepdims=True)
        ctx = (probs @ v).transpose(0, 2, 1, 3).reshape(batch, seq, cfg.hidden)
        x = layer_norm(
            dense(ctx, "attention.output.dense") + x,
            w[p + "attention.output.LayerNorm.weight"],
            w[p + "attention.output.LayerNorm.bias"],
            cfg.eps,
        )
        h = gelu(dense(x, "intermediate.dense"))
        x = layer_norm(dense(h, "output.dense") + x, w[p + "output.LayerNorm.weight"], w[p + "output.LayerNorm.bias"], cfg.eps)
    m = mask[:, :, None].astype(np.float64)
    pooled = (x * m).sum(1) / np.maximum(m.sum(1), 1e-9)
    return pooled / np.maximum(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12)


# ---------------------------------------------------------------- ONNX graph


class GraphBuilder:
    def __init__(self):
        self.nodes, self.inits, self.count = [], [], 0

    def const(self, name, array):
        self.inits.append(numpy_helper.from_array(np.asarray(array), name))
        return name

    def op(self, op_type, inputs, **attrs):
        self.count += 1
        out = f"{op_type.lower()}_{self.count}"
        self.nodes.append(helper.make_node(op_type, inputs, [out], **attrs))
        return out

    def dense(self, x, w, prefix):
        weight = self.const(prefix + ".weight_t", w[prefix + ".weight"].T.copy())
        return self.op("Add", [self.op("MatMul", [x, weight]), self.const(prefix + ".bias", w[prefix + ".bias"])])

    def layer_norm(self, x, w, prefix, eps):
        return self.op(
            "LayerNormalization",
            [x, self.const(prefix + ".weight", w[prefix + ".weight"]), self.const(prefix + ".bias", w[prefix + ".bias"])],
            axis=-1,
            epsilon=eps,
        )


def build_graph(w, cfg):
    g = GraphBuilder()
    heads_shape = g.const("heads_shape", np.array([0, 0, cfg.heads, cfg.head_dim], dtype=np.int64))
    hidden_shape = g.const("hidden_shape", np.array([0, 0, cfg.hidden], dtype=np.int64))
    one = g.const("one", np.array(1.0, dtype=np.float32))
    scale = g.const("scale", np.array(1.0 / np.sqrt(cfg.head_dim), dtype=np.float32))

    # Embeddings: word + position (0..seq) + token type, then LayerNorm.
    word = g.op("Gather", [g.const("word_embeddings", w["embeddings.word_embeddings.weight"]), "input_ids"])
    seq_len = g.op("Gather", [g.op("Shape", ["input_ids"]), g.const("axis1", np.array(1, dtype=np.int64))])
    positions = g.op("Range", [g.const("zero_i64", np.array(0, dtype=np.int64)), seq_len, g.const("one_i64", np.array(1, dtype=np.int64))])
    pos = g.op("Gather", [g.const("position_embeddings", w["embeddings.position_embeddings.weight"]), positions])
    typ = g.op("Gather", [g.const("token_type_embeddings", w["embeddings.token_type_embeddings.weight"]), "token_type_ids"])
    x = g.layer_norm(g.op("Add", [g.op("Add", [word, pos]), typ]), w, "embeddings.LayerNorm", cfg.eps)

    # Additive attention bias: 0 for real tokens, -10000 for padding. [batch, 1, 1, seq]
    mask_f = g.op("Cast", ["attention_mask"], to=TensorProto.FLOAT)
    bias = g.op("Mul", [g.op("Sub", [one, mask_f]), g.const("neg", np.array(-10000.0, dtype=np.float32))])
    bias = g.op("Unsqueeze", [bias, g.const("axes12", np.array([1, 2], dtype=np.int64))])

    for i in range(cfg.layers):
        p = f"encoder.layer.{i}."

        def heads(t, perm):
            return g.op("Transpose", [g.op("Reshape", [t, heads_shape])], perm=perm)

        q = heads(g.dense(x, w, p + "attention.self.query"), [0, 2, 1, 3])
        k = heads(g.dense(x, w, p + "attention.self.key"), [0, 2, 3, 1])
        v = heads(g.dense(x, w, p + "attention.self.value"), [0, 2, 1, 3])
        scores = g.op("Add", [g.op("Mul", [g.op("MatMul", [q, k]), scale]), bias])
        ctx = g.op("MatMul", [g.op("Softmax", [scores], axis=-1), v])
        ctx = g.op("Reshape", [g.op("Transpose", [ctx], perm=[0, 2, 1, 3]), hidden_shape])
        x = g.layer_norm(g.op("Add", [g.dense(ctx, w, p + "attention.output.dense"), x]), w, p + "attention.output.LayerNorm", cfg.eps)
        h = g.dense(x, w, p + "intermediate.dense")
        h = g.op("Mul", [g.op("Mul", [h, g.const(f"half{i}", np.array(0.5, dtype=np.float32))]),
                         g.op("Add", [one, g.op("Erf", [g.op("Div", [h, g.const(f"sqrt2_{i}", np.array(np.sqrt(2.0), dtype=np.float32))])])])])
        x = g.layer_norm(g.op("Add", [g.dense(h, w, p + "output.dense"), x]), w, p + "output.LayerNorm", cfg.eps)

    # Mean pooling over real tokens, then L2 normalisation.
    m = g.op("Unsqueeze", [mask_f, g.const("axis2", np.array([2], dtype=np.int64))])
    summed = g.op("ReduceSum", [g.op("Mul", [x, m]), g.const("axes1", np.array([1], dtype=np.int64))], keepdims=0)
    count = g.op("Max", [g.op("ReduceSum", [m, g.const("axes1b", np.array([1], dtype=np.int64))], keepdims=0),
                         g.const("min_count", np.array(1e-9, dtype=np.float32))])
    pooled = g.op("Div", [summed, count])
    norm = g.op("Max", [g.op("ReduceL2", [pooled], axes=[1], keepdims=1),
                        g.const("min_norm", np.array(1e-12, dtype=np.float32))])
    g.nodes.append(helper.make_node("Div", [pooled, norm], ["sentence_embedding"]))

    inputs = [helper.make_tensor_value_info(n, TensorProto.INT64, ["batch", "seq"]) for n in ("input_ids", "attention_mask", "token_type_ids")]
    output = helper.make_tensor_value_info("sentence_embedding", TensorProto.FLOAT, ["batch", cfg.hidden])
    graph = helper.make_graph(g.nodes, "all-MiniLM-L6-v2", inputs, [output], g.inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="sluice/scripts/models/build_encoder.py")
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def run_onnx(path, ids, mask, types):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    return session.run(["sentence_embedding"], {"input_ids": ids, "attention_mask": mask, "token_type_ids": types})[0]


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--registry", default=str(ROOT / "models"))
    parser.add_argument("--int8", action="store_true", help="also publish the int8 variant minilm-l6-int8")
    parser.add_argument("--force", action="store_true", help="publish new versions even if the models are already there")
    args = parser.parse_args()

    cfg = Config(WEIGHTS / "config.json")
    weights = load_file(str(WEIGHTS / "model.safetensors"))
    tok = tokenizer()
    ids, mask, types = encode_batch(tok, PARITY_SENTENCES)
    expected = reference(weights, cfg, ids, mask, types)

    with tempfile.TemporaryDirectory() as tmp:
        fp32 = Path(tmp) / "model.onnx"
        onnx.save(build_graph(weights, cfg), str(fp32))
        got = run_onnx(fp32, ids, mask, types)
        diff = float(np.abs(got - expected).max())
        print(f"encoder: ONNX Runtime vs numpy reference on {len(PARITY_SENTENCES)} sentences: max abs diff {diff:.2e}")
        if diff >= 1e-4:
            sys.exit("encoder: parity check failed (>= 1e-4); not publishing")

        ref = Path(tmp) / "reference.json"
        ref.write_text(json.dumps({
            "sentences": PARITY_SENTENCES,
            "input_ids": [[int(t) for t, m in zip(r, mr) if m] for r, mr in zip(ids, mask)],
            "sentence_embedding": expected.astype(np.float32).tolist(),
        }))
        tokenizer_json = WEIGHTS / "tokenizer.json"
        metrics = {"parity_max_abs_diff_vs_numpy": diff}
        # What the encoder is fed: tokens per review of the train split (the `tokens`
        # drift signal of the stage serving it).
        reviews = ROOT / "data" / "reviews.jsonl"
        profile = None
        if reviews.is_file():
            with open(reviews, encoding="utf-8") as f:
                texts = [r["text"] for r in map(json.loads, f) if r["split"] == "train"]
            profile = registry.token_profile(tok, texts)
        if args.force or registry.current(args.registry, "minilm-l6") is None:
            version = registry.publish(args.registry, "minilm-l6", fp32, metrics=metrics, extra_files=[tokenizer_json, ref],
                                       description="all-MiniLM-L6-v2 sentence encoder, fp32, built from safetensors",
                                       profile=profile)
            print(f"encoder: published minilm-l6 version {version}")

        if args.int8 and (args.force or registry.current(args.registry, "minilm-l6-int8") is None):
            import logging

            from onnxruntime.quantization import QuantType, quantize_dynamic

            # ORT suggests shape-inference pre-processing, which dynamic quantization of
            # MatMul weights does not need; keep set-up output quiet.
            logging.getLogger().setLevel(logging.ERROR)

            int8 = Path(tmp) / "model.int8.onnx"
            quantize_dynamic(str(fp32), str(int8), per_channel=True, weight_type=QuantType.QInt8)
            q = run_onnx(int8, ids, mask, types)
            cosine = float((q * got).sum(1).min())
            print(f"encoder: int8 vs fp32 minimum cosine similarity {cosine:.4f}")
            version = registry.publish(args.registry, "minilm-l6-int8", int8, metrics={"min_cosine_vs_fp32": cosine},
                                       extra_files=[tokenizer_json], profile=profile,
                                       description="all-MiniLM-L6-v2, int8 dynamic quantization (per-channel)")
            print(f"encoder: published minilm-l6-int8 version {version}")


if __name__ == "__main__":
    main()

"""A stand-in for the sentence encoder with almost no arithmetic, for measuring the host side.

`scripts/bench_host.sh` serves it in place of MiniLM: the same three int64 [batch, seq]
inputs and the same float32 [batch, 384] `sentence_embedding` output (each row a fixed
vector scaled by the row's token count and id sum, so the head after it still sees
different rows), but a model run costs microseconds. What the pipeline then reaches is
what its host side (decode, tokenize, batching, gather/scatter, the head, enrich, Parquet
with the 384-float embeddings, the Kafka output) can feed a model at: the ceiling a GPU
deployment is held to.

Usage: python3 scripts/models/build_host_probe.py REGISTRY_DIR
"""

import sys
import tempfile
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

sys.path.insert(0, str(Path(__file__).resolve().parent))
import registry  # noqa: E402

WIDTH = 384


def build(path):
    inputs = [helper.make_tensor_value_info(name, TensorProto.INT64, ["batch", "seq"])
              for name in ("input_ids", "attention_mask", "token_type_ids")]
    output = helper.make_tensor_value_info("sentence_embedding", TensorProto.FLOAT, ["batch", WIDTH])
    direction = np.random.default_rng(7).standard_normal((1, WIDTH)).astype(np.float32)
    direction /= np.linalg.norm(direction)
    nodes = []
    for name in ("input_ids", "attention_mask", "token_type_ids"):
        nodes.append(helper.make_node("Cast", [name], [f"{name}_f"], to=TensorProto.FLOAT))
        nodes.append(helper.make_node("ReduceSum", [f"{name}_f", "axis"], [f"{name}_sum"], keepdims=1))
    nodes += [
        helper.make_node("Mul", ["input_ids_sum", "scale"], ["ids_scaled"]),
        helper.make_node("Add", ["ids_scaled", "attention_mask_sum"], ["per_row_a"]),
        helper.make_node("Add", ["per_row_a", "token_type_ids_sum"], ["per_row"]),
        helper.make_node("Mul", ["per_row", "direction"], ["sentence_embedding"]),
    ]
    graph = helper.make_graph(
        nodes, "host_probe", inputs, [output],
        initializer=[
            numpy_helper.from_array(np.array([1], dtype=np.int64), "axis"),
            numpy_helper.from_array(np.array([[1e-6]], dtype=np.float32), "scale"),
            numpy_helper.from_array(direction, "direction"),
        ])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, path)


def main():
    root = Path(sys.argv[1])
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.onnx"
        build(path)
        registry.publish(root, "host-probe", path,
                         description="host-side probe: the encoder's interface, almost no arithmetic")


if __name__ == "__main__":
    main()

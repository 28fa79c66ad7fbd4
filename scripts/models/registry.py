"""Model registry layout shared by the set-up scripts (the Rust side is src/model/registry.rs).

    ROOT/NAME/VERSION/model.onnx       the model
    ROOT/NAME/VERSION/manifest.json    inputs, outputs, labels, metrics, created_at
    ROOT/NAME/current                  the serving version, one line, replaced by rename
"""

import datetime
import json
import os
import shutil
from pathlib import Path


def tensor_spec(value_info):
    """name/dtype/shape of an ONNX graph input or output, as the manifest lists it."""
    import onnx

    tensor = value_info.type.tensor_type
    dtype = onnx.helper.tensor_dtype_to_np_dtype(tensor.elem_type).name
    shape = [d.dim_param if d.dim_param else d.dim_value for d in tensor.shape.dim]
    return {"name": value_info.name, "dtype": dtype, "shape": shape}


def publish(root, name, model_path, labels=None, metrics=None, extra_files=(), make_current=True, description="",
            profile=None):
    """Copy a model into ROOT/NAME/<next version>/ with its manifest; switch `current`.

    `profile`: the reference profile drift is measured against (src/model/registry:
    Profile), e.g. an encoder's tokens per row."""
    import onnx

    model_dir = Path(root) / name
    model_dir.mkdir(parents=True, exist_ok=True)
    versions = [int(p.name) for p in model_dir.iterdir() if p.is_dir() and p.name.isdigit()]
    version = str(max(versions, default=0) + 1)
    staging = model_dir / f".{version}.tmp"
    if staging.exists():
        shutil.rmtree(staging)
    staging.mkdir()
    shutil.copyfile(model_path, staging / "model.onnx")
    for extra in extra_files:
        shutil.copyfile(extra, staging / Path(extra).name)
    model = onnx.load(str(model_path), load_external_data=False)
    manifest = {
        "name": name,
        "version": version,
        "created_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "description": description,
        "inputs": [tensor_spec(i) for i in model.graph.input],
        "outputs": [tensor_spec(o) for o in model.graph.output],
        "labels": labels,
        "metrics": metrics or {},
    }
    if profile is not None:
        manifest["profile"] = profile
    (staging / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    os.rename(staging, model_dir / version)
    if make_current:
        set_current(root, name, version)
    return version


def set_current(root, name, version):
    pointer = Path(root) / name / "current"
    tmp = pointer.with_name(".current.tmp")
    tmp.write_text(f"{version}\n")
    os.replace(tmp, pointer)


def current(root, name):
    pointer = Path(root) / name / "current"
    return pointer.read_text().strip() if pointer.exists() else None


def token_profile(tokenizer, texts):
    """Tokens per text as a drift reference: its deciles as bin edges and the share of
    texts in each bin (a bin holds the lengths with that many edges at or below them), as
    `sluice retrain` writes it for fine-tuned models (`profile.tokens`)."""
    import bisect

    lengths = sorted(len(e.ids) for e in tokenizer.encode_batch(list(texts)))
    n = len(lengths)
    edges = [float(lengths[min(k * n // 10, n - 1)]) for k in range(1, 10)]
    shares = [0.0] * (len(edges) + 1)
    for length in lengths:
        shares[bisect.bisect_right(edges, length)] += 1.0 / n
    return {"rows": n, "predicted": [], "top_score": [], "tokens": {"edges": edges, "shares": shares}}

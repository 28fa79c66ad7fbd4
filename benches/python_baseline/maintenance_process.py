#!/usr/bin/env python3
"""The Python baseline of the predictive-maintenance bench: what pipelines/maintenance-process.yaml
does, written the way such jobs are usually written in Python (pandas + numpy + onnxruntime +
pyarrow), over exactly the records `sluice bench --export-input` wrote.

Same windows (per machine, tumbling 10 min over event time, 2 min allowed lateness, a
window closes when the machine's newest event passes its end plus the lateness, later
events are dropped), same features, same ONNX model (models/process-failure/current), same
asset lookup, Parquet out. It reads the records from a JSON-lines file, not from Kafka, in
micro-batches of 1024 like a consumer loop, so it pays no broker cost: the comparison
favours the baseline.

With --compare, the windows it wrote are checked against the ones sluice wrote (same keys,
same failure probability to 1e-4), so both sides provably did the same work.

Appends one JSON line to --results: {"bench": "python/maintenance-process", "records",
"records_per_s", "windows", ...}.
"""

import argparse
import json
import subprocess
import time
from datetime import datetime
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

SIZE_MS = 10 * 60_000
LATENESS_MS = 2 * 60_000
BATCH = 1024
FEATURES = [
    ("air_temperature", "mean"),
    ("process_temperature", "mean"),
    ("process_temperature", "min"),
    ("rotational_speed", "mean"),
    ("rotational_speed", "min"),
    ("rotational_speed", "max"),
    ("torque", "mean"),
    ("torque", "min"),
    ("torque", "max"),
    ("tool_wear", "max"),
]
EXTRA = [("machine_failure", "max")]
COLUMNS = sorted({c for c, _ in FEATURES + EXTRA})
ROOT = Path(__file__).resolve().parents[2]


def model_path(models: Path, name: str) -> Path:
    version = (models / name / "current").read_text().strip()
    return models / name / version / "model.onnx"


class Windows:
    """Per-machine tumbling windows with a per-machine watermark."""

    def __init__(self):
        self.open = {}  # machine -> {window start -> list of rows}
        self.watermark = {}
        self.late = 0

    def add(self, row):
        machine, ts = row["machine_id"], row["ts_ms"]
        start = ts - ts % SIZE_MS
        mark = self.watermark.get(machine)
        if mark is not None and start + SIZE_MS + LATENESS_MS <= mark:
            self.late += 1
            return []
        windows = self.open.setdefault(machine, {})
        windows.setdefault(start, []).append(row)
        mark = ts if mark is None else max(mark, ts)
        self.watermark[machine] = mark
        closed = [s for s in windows if s + SIZE_MS + LATENESS_MS <= mark]
        return [(machine, s, windows.pop(s)) for s in sorted(closed)]


def features(machine, start, rows):
    frame = pd.DataFrame(rows, columns=COLUMNS)
    out = {"machine_id": machine, "window_start": start, "window_end": start + SIZE_MS,
           "records": len(frame)}
    for column, feature in FEATURES + EXTRA:
        out[f"{column}_{feature}"] = float(getattr(frame[column], feature)())
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--input", required=True, type=Path)
    parser.add_argument("--out", required=True, type=Path, help="Parquet file to write")
    parser.add_argument("--models", default=ROOT / "models", type=Path)
    parser.add_argument("--assets", default=ROOT / "pipelines/reference/assets.csv", type=Path)
    parser.add_argument("--compare", type=Path, help="sluice's window dataset to check against")
    parser.add_argument("--results", type=Path)
    args = parser.parse_args()

    lines = args.input.read_bytes().splitlines()
    session = ort.InferenceSession(str(model_path(args.models, "process-failure")),
                                   providers=["CPUExecutionProvider"])
    labels = json.loads(session.get_modelmeta().custom_metadata_map.get("labels", '["ok","failure"]'))
    assets = pd.read_csv(args.assets)
    windows = Windows()
    tables = []

    started = time.perf_counter()
    for first in range(0, len(lines), BATCH):
        closed = []
        for line in lines[first:first + BATCH]:
            row = json.loads(line)
            row["ts_ms"] = round(datetime.fromisoformat(row["ts"]).timestamp() * 1000)
            closed.extend(windows.add(row))
        if not closed:
            continue
        frame = pd.DataFrame([features(*c) for c in closed])
        inputs = frame[[f"{c}_{f}" for c, f in FEATURES]].to_numpy(dtype=np.float32)
        (probabilities,) = session.run(["probabilities"], {"features": inputs})
        frame["label"] = [labels[i] for i in probabilities.argmax(axis=1)]
        frame["failure_probability"] = probabilities[:, 1]
        frame = frame.merge(assets, on="machine_id", how="left")
        tables.append(pa.Table.from_pandas(frame, preserve_index=False))
    table = pa.concat_tables(tables)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, args.out)
    elapsed = time.perf_counter() - started

    rate = len(lines) / elapsed
    print(f"python baseline: {len(lines)} records, {table.num_rows} windows, "
          f"{windows.late} late, {elapsed:.2f} s, {rate:.0f} records/s")
    if args.compare:
        compare(table.to_pandas(), args.compare)
    if args.results:
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
        result = {"bench": "python/maintenance-process", "unix_time": int(time.time()),
                  "git_rev": rev.stdout.strip() or None, "records": len(lines),
                  "windows": table.num_rows, "records_per_s": rate,
                  "pandas": pd.__version__, "onnxruntime": ort.__version__}
        with args.results.open("a") as f:
            f.write(json.dumps(result) + "\n")
        print(f"appended to {args.results}")


def compare(ours, dataset: Path):
    table = pq.read_table(sorted(str(p) for p in dataset.rglob("*.parquet")))
    theirs = pd.DataFrame({
        "machine_id": table["machine_id"].to_pylist(),
        "window_start": table["window_start"].cast(pa.int64()).to_pylist(),  # ms since epoch
        "failure_probability": table["failure_probability"].to_pylist(),
    })
    key = ["machine_id", "window_start"]
    both = ours.merge(theirs, on=key, suffixes=("", "_sluice"))
    if len(both) != len(ours) or len(both) != len(theirs):
        raise SystemExit(f"different windows: python {len(ours)}, sluice {len(theirs)}, common {len(both)}")
    worst = (both["failure_probability"] - both["failure_probability_sluice"]).abs().max()
    if worst > 1e-4:
        raise SystemExit(f"failure probabilities differ by up to {worst}")
    print(f"same {len(both)} windows as sluice; failure probabilities agree to {worst:.1e}")


if __name__ == "__main__":
    main()

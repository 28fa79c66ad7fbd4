#!/usr/bin/env bash
# The sentiment pipeline on the CPU against the same job written in Python, on the same
# records in the same run (issue 16): held-out reviews as feedback records in a JSON-lines
# file; sluice runs pipelines/sentiment.yaml over it as a backfill (Parquet only, model
# loading included; its encoder stage serves `cpu_model` on the CPU: minilm-l6-int8 as
# shipped, or with SLUICE_CPU_ENCODER a copy of the file serving that model instead),
# then benches/python_baseline/sentiment.py does the same work three ways: the typical
# Python job (fp32 encoder, batches of 32 in arrival order), the same with sluice's encoder,
# and that sorted by length over the whole input (the bare ONNX Runtime limit).
# Appends one line per side and one comparison line to benches/results/e2e.jsonl.
#
# Usage: scripts/bench_sentiment.sh [RECORDS]   (default 1000)
# Environment: SLUICE_CPU_ENCODER (default minilm-l6-int8, what sentiment.yaml serves on the
# CPU; minilm-l6 for the fp32 encoder).
set -euo pipefail
cd "$(dirname "$0")/.."
records="${1:-1000}"
encoder="${SLUICE_CPU_ENCODER:-minilm-l6-int8}"
pipeline=pipelines/sentiment.yaml
grep -q "^      cpu_model: minilm-l6-int8$" "$pipeline" || { echo "$pipeline no longer serves minilm-l6-int8 on the CPU" >&2; exit 1; }
if [[ "$encoder" != minilm-l6-int8 ]]; then
  pipeline="pipelines/.bench-sentiment-$encoder.yaml"
  sed "s/^      cpu_model: minilm-l6-int8$/      cpu_model: $encoder/" pipelines/sentiment.yaml >"$pipeline"
  trap 'rm -f "$pipeline"' EXIT
fi
results=benches/results/e2e.jsonl
out=out/bench-sentiment-python
rm -rf "$out"
mkdir -p "$out"

python3 - "$records" >"$out/input.jsonl" <<'PY'
import json, sys
n = int(sys.argv[1])
with open("data/reviews.jsonl") as f:
    rows = [json.loads(line) for line in f]
held_out = [r for r in rows if r["split"] != "train"][:n]
for i, r in enumerate(held_out):
    print(json.dumps({"id": r["id"], "customer_id": f"c-{i % 97}", "text": r["text"],
                      "rating": r.get("rating"), "channel": "web", "ts": "2026-11-30T12:00:00Z"}))
PY

start=$(date +%s.%N)
SLUICE_DEVICE=cpu ./target/release/sluice backfill "$pipeline" \
  --input "$out/input.jsonl" --sinks parquet --out "$out/sluice" --quiet >"$out/sluice.txt"
sluice_seconds=$(python3 -c "import sys; print(float(sys.argv[2]) - float(sys.argv[1]))" "$start" "$(date +%s.%N)")

typical=$(python3 benches/python_baseline/sentiment.py --input "$out/input.jsonl" --encoder minilm-l6 \
  --out "$out/python-fp32.parquet" --compare "$out/sluice/feedback" --results "$results")
arrival=$(python3 benches/python_baseline/sentiment.py --input "$out/input.jsonl" --encoder "$encoder" \
  --out "$out/python.parquet" --compare "$out/sluice/feedback" --results "$results")
sorted=$(python3 benches/python_baseline/sentiment.py --input "$out/input.jsonl" --encoder "$encoder" \
  --out "$out/python-sorted.parquet" --sorted --results "$results")

python3 - "$records" "$sluice_seconds" "$arrival" "$sorted" "$encoder" "$results" "$typical" <<'PY'
import json, subprocess, sys, time, os
records, seconds = int(sys.argv[1]), float(sys.argv[2])
arrival, sorted_, encoder, results = json.loads(sys.argv[3]), json.loads(sys.argv[4]), sys.argv[5], sys.argv[6]
typical = json.loads(sys.argv[7])
rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip() or None
line = {
    "bench": "e2e/sentiment-vs-python", "unix_time": int(time.time()), "git_rev": rev,
    "encoder": encoder, "records": records, "host_cpus": os.cpu_count(),
    "sluice_seconds": seconds,
    "python_typical_fp32_seconds": typical["seconds"],
    "python_same_encoder_seconds": arrival["seconds"],
    "python_same_encoder_sorted_seconds": sorted_["seconds"],
    "speedup_vs_python_typical": typical["seconds"] / seconds,
    "speedup_vs_python_same_encoder": arrival["seconds"] / seconds,
    "speedup_vs_python_same_encoder_sorted": sorted_["seconds"] / seconds,
    "same_label_as_sluice_typical": typical.get("same_label_as_sluice"),
    "same_label_as_sluice_same_encoder": arrival.get("same_label_as_sluice"),
}
print(f"sluice ({encoder}) {seconds:.2f}s; Python fp32 in arrival order {typical['seconds']:.2f}s "
      f"(x{line['speedup_vs_python_typical']:.2f}); Python {encoder} {arrival['seconds']:.2f}s "
      f"(x{line['speedup_vs_python_same_encoder']:.2f}); Python {encoder} sorted {sorted_['seconds']:.2f}s "
      f"(x{line['speedup_vs_python_same_encoder_sorted']:.2f}); same label as sluice: "
      f"{line['same_label_as_sluice_typical']} (fp32), {line['same_label_as_sluice_same_encoder']} ({encoder})")
with open(results, "a") as f:
    f.write(json.dumps(line) + "\n")
PY

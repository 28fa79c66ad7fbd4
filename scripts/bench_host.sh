#!/usr/bin/env bash
# The host side of the sentiment pipeline: what it can feed a model at (issue 16, item 5).
#
# pipelines/sentiment.yaml with the encoder swapped for a stand-in of the same interface
# that costs microseconds per run (scripts/models/build_host_probe.py) and the encoder's
# max_batch at 256 (the GPU setting of scripts/gpu_check.sh); everything else (decode,
# tokenize, batching, the real head, enrich, Parquet with 384-float embeddings, the Kafka
# output) is the shipped pipeline. `sluice bench` on the mock cluster then measures the
# records/s the host side sustains, i.e. the CPU cost per batch of 256 that a GPU run waits
# on. Appends to benches/results/host.jsonl.
#
# Usage: scripts/bench_host.sh [RECORDS] [PARTITIONS]   (default 40000, 4)
# Environment: SLUICE_BIN (default target/release/sluice), to compare two builds;
# SLUICE_INTRA_SPINNING=true to let ONNX Runtime's threads spin (infer `intra_spinning`);
# SLUICE_WRAP, a command to run sluice under (e.g. `perf record -g --`).
set -euo pipefail
cd "$(dirname "$0")/.."
records="${1:-40000}"
partitions="${2:-4}"
sluice="${SLUICE_BIN:-target/release/sluice}"
out=out/bench-host
registry="$PWD/$out/models"
rm -rf "$out"
mkdir -p "$registry"
for model in minilm-l6 sentiment-head; do
    ln -s "$PWD/models/$model" "$registry/$model"
done
python3 scripts/models/build_host_probe.py "$registry"

variant=pipelines/.bench-host.yaml
trap 'rm -f "$variant"' EXIT
grep -q '^      model: minilm-l6$' pipelines/sentiment.yaml || { echo "sentiment.yaml's encoder is not minilm-l6" >&2; exit 1; }
sed -e 's/^      model: minilm-l6$/      model: host-probe/' -e '/^      cpu_model: /d' \
    -e 's/^      max_batch: 32$/      max_batch: 256/' \
    -e "s/^      device: \${SLUICE_DEVICE:-auto}$/&\n      intra_spinning: ${SLUICE_INTRA_SPINNING:-false}/" \
    pipelines/sentiment.yaml >"$variant"
SLUICE_MODELS="$registry" SLUICE_DEVICE=cpu ${SLUICE_WRAP:-} "$sluice" bench --pipeline "$variant" \
    --records "$records" --partitions "$partitions" --out "$out/run" \
    --results benches/results/host.jsonl 2>"$out/bench.log"

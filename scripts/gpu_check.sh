#!/usr/bin/env bash
# The CUDA path on a machine with an NVIDIA GPU: checks it, then measures it against the CPU
# on the same machine.
#
#   scripts/setup.sh --gpu      # once: onnxruntime-gpu from PyPI into .tools/onnxruntime-gpu/
#   cargo build --release
#   LD_LIBRARY_PATH=<CUDA 13 + cuDNN 9 lib dirs> scripts/gpu_check.sh
#
# 1. Correctness: `sluice demo --pipeline sentiment` over the same held-out reviews with
#    `device: cuda` (which refuses to fall back to the CPU) and with `device: cpu`; the two
#    datasets' probabilities are compared row by row (needs pyarrow; otherwise only the
#    accuracy lines are compared).
# 2. Throughput: `sluice bench --pipeline sentiment` with each device, then on CUDA with the
#    encoder's `max_batch` raised from 32 to 256 and 1024 (pipeline copies named
#    sentiment-b256 / sentiment-b1024, made here and removed after). Results are appended to
#    benches/results/e2e.jsonl (field `inference` says where each model ran).
#
# Environment: SLUICE_BIN (default target/release/sluice), RESULTS (results file),
# OUT_DIR (default out/gpu-check), RECORDS (bench records, default 20000).
set -euo pipefail
cd "$(dirname "$0")/.."

sluice=${SLUICE_BIN:-target/release/sluice}
results=${RESULTS:-benches/results/e2e.jsonl}
out=${OUT_DIR:-out/gpu-check}
records=${RECORDS:-20000}
mkdir -p "$out"

nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader

for device in cuda cpu; do
    echo "== demo, device: $device"
    SLUICE_DEVICE=$device "$sluice" demo --pipeline sentiment --records 2000 \
        --out "$out/demo-$device" 2>"$out/demo-$device.log" | tee "$out/demo-$device.txt"
    grep -h "inference on" "$out/demo-$device.log" | sed 's/^/    /' || true
done

python3 - "$out" <<'EOF' || echo "(pyarrow not available: compare the accuracy lines above)"
import sys
import pyarrow.dataset as ds
out = sys.argv[1]
def probs(device):
    t = ds.dataset(f"{out}/demo-{device}/feedback", format="parquet", partitioning="hive")
    t = t.to_table(columns=["id", "probabilities", "label"])
    return {i: (p, l) for i, p, l in zip(t["id"].to_pylist(), t["probabilities"].to_pylist(), t["label"].to_pylist())}
cuda, cpu = probs("cuda"), probs("cpu")
assert cuda.keys() == cpu.keys(), "the two runs wrote different ids"
diff = max(abs(a - b) for k in cuda for a, b in zip(cuda[k][0], cpu[k][0]))
same = sum(cuda[k][1] == cpu[k][1] for k in cuda)
print(f"cuda vs cpu: {len(cuda)} rows, max |probability difference| {diff:.2e}, same label {same}/{len(cuda)}")
EOF

for device in cpu cuda; do
    echo "== bench, device: $device"
    SLUICE_DEVICE=$device "$sluice" bench --pipeline sentiment --records "$records" \
        --out "$out/bench-$device" --results "$results" 2>"$out/bench-$device.log"
done

trap 'rm -f pipelines/.gpu-check-*.yaml' EXIT
for batch in 256 1024; do
    echo "== bench, device: cuda, encoder max_batch: $batch"
    variant=pipelines/.gpu-check-b$batch.yaml
    sed -e "s/^      max_batch: 32$/      max_batch: $batch/" \
        -e "s/^name: sentiment$/name: sentiment-b$batch/" pipelines/sentiment.yaml >"$variant"
    SLUICE_DEVICE=cuda "$sluice" bench --pipeline "$variant" --records $((records * 10)) \
        --out "$out/bench-cuda-b$batch" --results "$results" 2>"$out/bench-cuda-b$batch.log"
done

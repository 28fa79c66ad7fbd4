#!/usr/bin/env bash
# Runs the benchmarks and appends their numbers to files that compare run to run:
#   benches/results/criterion.jsonl  one line per criterion benchmark (mean, rows/s or bytes/s)
#   benches/results/compression.jsonl  the Kafka sink codecs (messages/s, bytes on the wire)
#   benches/results/e2e.jsonl        `sluice bench`: topic -> Parquet vs raw consume rate, and
#                                    the sentiment pipeline (tokenize + MiniLM + head) on the CPU,
#                                    the process-maintenance pipeline (windows + MLP + assets)
#                                    and its Python baseline (pandas/numpy/onnxruntime) over the
#                                    same records, checked to produce the same windows
# Usage: scripts/bench.sh [RECORDS] [SENTIMENT_RECORDS] [SENSOR_RECORDS]
#        (defaults 200000, 2000 and 50000: 50000 readings are what the in-process mock
#        cluster holds at once, so the topic is loaded before the clock starts)
set -euo pipefail
cd "$(dirname "$0")/.."
records="${1:-200000}"
sentiment_records="${2:-2000}"
sensor_records="${3:-50000}"
python3 scripts/requirements_met.py scripts/requirements-bench.txt ||
  python3 -m pip install --disable-pip-version-check -q -r scripts/requirements-bench.txt

cargo bench --bench decode --bench parquet_encode --bench inference
cargo bench --bench compression   # appends to benches/results/compression.jsonl
python3 scripts/collect_criterion.py target/criterion benches/results/criterion.jsonl

cargo build --release
rm -rf out/bench
./target/release/sluice bench --records "$records" --out out/bench --results benches/results/e2e.jsonl
rm -rf out/bench-sentiment
SLUICE_DEVICE="${SLUICE_DEVICE:-auto}" ./target/release/sluice bench --pipeline sentiment --records "$sentiment_records" \
  --out out/bench-sentiment --results benches/results/e2e.jsonl
rm -rf out/bench-maintenance
./target/release/sluice bench --pipeline maintenance-process --records "$sensor_records" \
  --out out/bench-maintenance --results benches/results/e2e.jsonl \
  --export-input out/bench-maintenance/input.jsonl
python3 benches/python_baseline/maintenance_process.py --input out/bench-maintenance/input.jsonl \
  --out out/bench-maintenance/python.parquet --compare out/bench-maintenance/windows \
  --results benches/results/e2e.jsonl

#!/usr/bin/env bash
# Runs the benchmarks and appends their numbers to files that compare run to run:
#   benches/results/criterion.jsonl  one line per criterion benchmark (mean, rows/s or bytes/s)
#   benches/results/e2e.jsonl        `sluice bench`: topic -> Parquet vs raw consume rate, and
#                                    the sentiment pipeline (tokenize + MiniLM + head) on the CPU
# Usage: scripts/bench.sh [RECORDS] [SENTIMENT_RECORDS]   (defaults 200000 and 2000)
set -euo pipefail
cd "$(dirname "$0")/.."
records="${1:-200000}"
sentiment_records="${2:-2000}"

cargo bench --bench decode --bench parquet_encode --bench inference
python3 scripts/collect_criterion.py target/criterion benches/results/criterion.jsonl

cargo build --release
rm -rf out/bench
./target/release/sluice bench --records "$records" --out out/bench --results benches/results/e2e.jsonl
rm -rf out/bench-sentiment
SLUICE_DEVICE="${SLUICE_DEVICE:-auto}" ./target/release/sluice bench --pipeline sentiment --records "$sentiment_records" \
  --out out/bench-sentiment --results benches/results/e2e.jsonl

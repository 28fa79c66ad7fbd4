#!/usr/bin/env bash
# Runs the benchmarks and appends their numbers to files that compare run to run:
#   benches/results/criterion.jsonl  one line per criterion benchmark (mean, rows/s or bytes/s)
#   benches/results/e2e.jsonl        `sluice bench`: topic -> Parquet vs raw consume rate
# Usage: scripts/bench.sh [RECORDS]   (default 200000 for the end-to-end run)
set -euo pipefail
cd "$(dirname "$0")/.."
records="${1:-200000}"

cargo bench --bench decode --bench parquet_encode
python3 scripts/collect_criterion.py target/criterion benches/results/criterion.jsonl

cargo build --release
rm -rf out/bench
./target/release/sluice bench --records "$records" --out out/bench --results benches/results/e2e.jsonl

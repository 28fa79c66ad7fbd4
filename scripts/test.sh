#!/usr/bin/env bash
# The full check, exactly what CI runs (.ci/run calls this): set-up, formatting, lints,
# every test (unit, mock-cluster integration, kill -9 against a noida-db broker process,
# demo read back by pyarrow and DuckDB).
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/setup.sh --test
echo "== import cycles between top-level modules"
python3 scripts/check_cycles.py
echo "== cargo fmt --check"
cargo fmt --check
echo "== cargo clippy --all-targets -- -D warnings"
cargo clippy --all-targets --locked -- -D warnings
echo "== cargo test"
cargo test --all-targets --locked

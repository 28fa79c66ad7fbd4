#!/usr/bin/env bash
# Records/s of the no-model bench pipeline into a Parquet dataset and into a Delta table,
# each on local disk and on an S3-protocol server (moto, from PyPI, on loopback), one run
# after the other on the same machine, with the raw rdkafka consume rate of the same
# messages beside each. Appends to benches/results/storage.jsonl and prints the server's
# own CPU time (moto is a Python server: it is part of what the S3 numbers measure).
# Usage: scripts/bench_storage.sh [RECORDS]   (default 200000)
set -euo pipefail
cd "$(dirname "$0")/.."
records="${1:-200000}"
results=benches/results/storage.jsonl
python3 scripts/requirements_met.py scripts/requirements-test.txt ||
  python3 -m pip install --disable-pip-version-check -q -r scripts/requirements-test.txt
cargo build --release

port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
moto_server -H 127.0.0.1 -p "$port" >/dev/null 2>&1 &
moto=$!
trap 'kill "$moto" 2>/dev/null || true' EXIT
python3 - "$port" <<'PY'
import sys, time, urllib.request
url = f"http://127.0.0.1:{sys.argv[1]}/bench"
for _ in range(300):
    try:
        urllib.request.urlopen(urllib.request.Request(url, method="PUT"))
        break
    except OSError:
        time.sleep(0.1)
else:
    sys.exit("moto_server did not start")
PY
export AWS_ENDPOINT_URL="http://127.0.0.1:$port" AWS_ALLOW_HTTP=true AWS_REGION=us-east-1 \
  AWS_ACCESS_KEY_ID=bench AWS_SECRET_ACCESS_KEY=bench

rm -rf out/bench-storage
for pipeline in bench bench-delta; do
  ./target/release/sluice bench --pipeline "$pipeline" --records "$records" \
    --out "out/bench-storage/$pipeline" --results "$results"
  ./target/release/sluice bench --pipeline "$pipeline" --records "$records" \
    --out "s3://bench/$pipeline" --results "$results"
done
echo "moto_server CPU time (user+system, s): $(python3 -c "
import os; t = open('/proc/$moto/stat').read().split(')')[1].split(); hz = os.sysconf('SC_CLK_TCK')
print(round((int(t[11]) + int(t[12])) / hz, 1))")"

#!/usr/bin/env bash
# A real drift run for the README (issue 17): the sentiment pipeline serves held-out movie
# reviews (Rotten Tomatoes, the domain most of its head's training rows come from), then
# held-out tweets, through `sluice demo` on the in-process cluster (one partition, so the
# stages see that order), with drift windows of WINDOW rows on the encoder's stage (tokens
# per review) and the head's (predictions, embedding similarity); the demo draws every drift gauge, window after window,
# into docs/drift-sentiment.png (`sluice demo --drift-plot`).
#
# Usage: scripts/drift_plot.sh [PER_SOURCE] [WINDOW]   (default 2500 250)
set -euo pipefail
cd "$(dirname "$0")/.."
per_source="${1:-2500}"
window="${2:-250}"
sluice="${SLUICE_BIN:-target/release/sluice}"
work="$PWD/out/drift-plot"
rm -rf "$work"
mkdir -p "$work" docs
python3 - "$per_source" >"$work/reviews.jsonl" <<'PY'
import json, sys
n = int(sys.argv[1])
rows = [json.loads(line) for line in open("data/reviews.jsonl")]
for source in ("rotten_tomatoes", "tweets"):
    for r in [r for r in rows if r["split"] == "holdout" and r["source"] == source][:n]:
        print(json.dumps(r))
PY
pipeline="pipelines/.drift-plot-sentiment.yaml"
sed -e "/^      model: sentiment-head$/a\\      drift: {window: $window}" \
  -e "/^      model: minilm-l6$/a\\      drift: {window: $window}" \
  pipelines/sentiment.yaml >"$pipeline"
trap 'rm -f "$pipeline"' EXIT
SLUICE_DEVICE="${SLUICE_DEVICE:-cpu}" "$sluice" demo --pipeline "$pipeline" --reviews "$work/reviews.jsonl" \
  --split holdout --records $((2 * per_source)) --malformed-rate 0 --out "$work/out" --partitions 1 \
  --drift-plot docs/drift-sentiment.png
echo "drift plot: docs/drift-sentiment.png"

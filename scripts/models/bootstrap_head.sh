#!/usr/bin/env bash
# Makes the first sentiment head with sluice itself, the same way every later head is made:
#   1. pipelines/embed-reviews.yaml (tokenize + MiniLM encoder, no head) runs on the train
#      split of data/reviews.jsonl through the in-process Kafka cluster (`sluice demo`),
#      writing embeddings and ratings to Parquet;
#   2. `sluice retrain pipelines/retrain-sentiment.yaml` trains on that dataset (labels from
#      the ratings) and, with no serving version yet, publishes sentiment-head/1.
# Usage: scripts/models/bootstrap_head.sh PATH_TO_SLUICE_BINARY [RECORDS]
set -euo pipefail
cd "$(dirname "$0")/../.."
sluice="$1"
records="${2:-6000}"
out="$PWD/.tools/bootstrap"
rm -rf "$out"
echo "bootstrap: embedding $records labelled train reviews with pipelines/embed-reviews.yaml"
SLUICE_DEVICE="${SLUICE_DEVICE:-cpu}" "$sluice" demo --pipeline embed-reviews --split train \
  --records "$records" --malformed-rate 0 --out "$out" >/dev/null
echo "bootstrap: training the first head with sluice retrain"
SLUICE_OUT="$out" SLUICE_MODELS="$PWD/models" "$sluice" retrain pipelines/retrain-sentiment.yaml
rm -rf "$out"

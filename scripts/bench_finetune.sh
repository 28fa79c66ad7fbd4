#!/usr/bin/env bash
# Fine-tuning the encoder against the frozen-encoder head, on the same rows (issue 17):
#   1. TRAIN labelled reviews of the train split go through pipelines/embed-reviews.yaml
#      (`sluice demo`), the dataset both trainers read (text, rating, embedding);
#   2. `sluice retrain pipelines/retrain-sentiment.yaml --dry-run` trains a head on the
#      embeddings, `sluice retrain pipelines/retrain-sentiment-tuned.yaml` fine-tunes
#      MiniLM + head on the texts (EPOCHS passes) and publishes sentiment-tuned into a
#      scratch registry: both reports are on the same holdout rows;
#   3. `sluice demo` serves HOLDOUT held-out reviews (another split: no review seen in
#      training) with pipelines/sentiment.yaml (the shipped head) and with
#      pipelines/tuned/sentiment-tuned.yaml: agreement with the reviews' own labels.
# Appends one JSON line to benches/results/finetune.jsonl.
#
# Usage: scripts/bench_finetune.sh [TRAIN] [EPOCHS] [HOLDOUT]   (default 6000 2 2000)
set -euo pipefail
cd "$(dirname "$0")/.."
train="${1:-6000}"
epochs="${2:-2}"
holdout="${3:-2000}"
sluice="${SLUICE_BIN:-target/release/sluice}"
work="$PWD/out/bench-finetune"
rm -rf "$work"
mkdir -p "$work/models"
for model in minilm-l6 sentiment-head; do
  ln -s "$PWD/models/$model" "$work/models/$model"
done
export SLUICE_MODELS="$work/models" SLUICE_DEVICE=cpu

echo "finetune bench: embedding $train train reviews (the dataset)"
"$sluice" demo --pipeline embed-reviews --split train --records "$train" --malformed-rate 0 \
  --out "$work/dataset" >/dev/null

echo "finetune bench: head on frozen embeddings (dry run)"
head_line=$(SLUICE_OUT="$work/dataset" "$sluice" retrain pipelines/retrain-sentiment.yaml --dry-run | tail -1)
echo "$head_line"

echo "finetune bench: fine-tuning MiniLM + head, $epochs epochs"
start=$(date +%s.%N)
tuned_line=$(SLUICE_OUT="$work/dataset" SLUICE_FINETUNE_EPOCHS="$epochs" \
  "$sluice" retrain pipelines/retrain-sentiment-tuned.yaml | tail -1)
seconds=$(python3 -c "print(round($(date +%s.%N) - $start, 1))")
echo "$tuned_line ($seconds s)"

agreement() {
  "$sluice" demo --pipeline "$1" --split holdout --records "$holdout" --malformed-rate 0 \
    --out "$work/serve-$2" | grep "agree with the known labels" | tail -1
}
echo "finetune bench: serving $holdout held-out reviews with each"
head_serving=$(agreement sentiment head)
tuned_serving=$(agreement pipelines/tuned/sentiment-tuned.yaml tuned)
echo "head:  $head_serving"
echo "tuned: $tuned_serving"

python3 - "$train" "$epochs" "$holdout" "$seconds" "$head_line" "$tuned_line" \
  "$head_serving" "$tuned_serving" "$work/models/sentiment-tuned" <<'PY' | tee -a benches/results/finetune.jsonl
import json, re, sys, datetime, os
train, epochs, holdout, seconds, head, tuned, head_serving, tuned_serving, registry = sys.argv[1:]
def f1(line):
    m = re.search(r"candidate macro_f1 ([0-9.]+)", line)
    return float(m.group(1)) if m else None
def serving(line):
    m = re.search(r"agree with the known labels: ([0-9.]+)%, macro-F1 ([0-9.]+)", line)
    return {"agreement_pct": float(m.group(1)), "macro_f1": float(m.group(2))} if m else None
report = {}
current = os.path.join(registry, "current")
if os.path.exists(current):
    version = open(current).read().strip()
    path = os.path.join(registry, version, "report.json")
    if os.path.exists(path):
        report = json.load(open(path))
print(json.dumps({
    "bench": "finetune", "at": datetime.datetime.utcnow().isoformat(timespec="seconds") + "Z",
    "cores": os.cpu_count(), "train_reviews": int(train), "epochs": int(epochs),
    "fine_tune_seconds": float(seconds),
    "same_holdout": {"rows": report.get("holdout_rows"), "train_rows": report.get("train_rows"),
                     "head_macro_f1": f1(head), "tuned_macro_f1": f1(tuned),
                     "tuned_accuracy": (report.get("candidate") or {}).get("accuracy"),
                     "onnx_max_abs_diff": report.get("onnx_max_abs_diff")},
    "held_out_reviews": {"rows": int(holdout), "head": serving(head_serving), "tuned": serving(tuned_serving)},
}))
PY

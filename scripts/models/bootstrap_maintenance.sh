#!/usr/bin/env bash
# Makes the first predictive-maintenance models with sluice itself, the way every later
# version is made (window the sensor feed, then `sluice retrain` on the windows):
#   bearing-health:  pipelines/bearing-windows.yaml over the MFPT *train* recordings
#                    (labels: the rigs' known condition), pipelines/retrain-bearings.yaml
#   process-failure: pipelines/process-windows.yaml over generated AI4I-style readings
#                    (labels: a failure in the window), pipelines/retrain-process.yaml
# Usage: scripts/models/bootstrap_maintenance.sh PATH_TO_SLUICE_BINARY
set -euo pipefail
cd "$(dirname "$0")/../.."
sluice="$1"
out="$PWD/.tools/bootstrap"
if [[ ! -f models/bearing-health/current ]]; then
  rm -rf "$out"
  echo "bootstrap: windowing the MFPT train recordings with pipelines/bearing-windows.yaml"
  "$sluice" demo --pipeline bearing-windows --split train --out "$out" >/dev/null
  echo "bootstrap: training bearing-health with sluice retrain"
  SLUICE_OUT="$out" SLUICE_MODELS="$PWD/models" "$sluice" retrain pipelines/retrain-bearings.yaml
fi
if [[ ! -f models/process-failure/current ]]; then
  rm -rf "$out"
  echo "bootstrap: windowing 60000 generated process readings with pipelines/process-windows.yaml"
  "$sluice" demo --pipeline process-windows --split train --records 60000 --out "$out" >/dev/null
  echo "bootstrap: training process-failure with sluice retrain"
  SLUICE_OUT="$out" SLUICE_MODELS="$PWD/models" "$sluice" retrain pipelines/retrain-process.yaml
fi
rm -rf "$out"

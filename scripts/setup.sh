#!/usr/bin/env bash
# Installs what sluice needs on a fresh Debian/Ubuntu machine, from package registries only.
#
#   scripts/setup.sh          build dependencies (C toolchain for the vendored librdkafka)
#   scripts/setup.sh --test   also the Python tools the tests use (scripts/requirements-test.txt):
#                             noida-db (a Kafka-protocol broker process), pyarrow, duckdb
#
# Idempotent: installs only what is missing. The Rust toolchain itself (cargo with rustfmt
# and clippy) is expected to be there already (rustup).
set -euo pipefail
cd "$(dirname "$0")/.."

want_test=false
[[ "${1:-}" == "--test" ]] && want_test=true

apt_packages=(build-essential pkg-config zlib1g-dev)
missing=()
for pkg in "${apt_packages[@]}"; do
  dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
done
if ((${#missing[@]})); then
  echo "setup: installing ${missing[*]} (apt)"
  sudo_cmd=""
  [[ $(id -u) -ne 0 ]] && sudo_cmd="sudo"
  $sudo_cmd apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq "${missing[@]}" >/dev/null
fi

command -v cargo >/dev/null || { echo "setup: cargo not found: install Rust with rustup first" >&2; exit 1; }

if $want_test; then
  command -v python3 >/dev/null || { echo "setup: python3 not found" >&2; exit 1; }
  if ! python3 scripts/requirements_met.py scripts/requirements-test.txt; then
    echo "setup: installing Python test tools (pip): $(grep -vE '^\s*(#|$)' scripts/requirements-test.txt | tr '\n' ' ')"
    python3 -m pip install --disable-pip-version-check -q -r scripts/requirements-test.txt
  fi
fi
echo "setup: ok"

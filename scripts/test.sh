#!/usr/bin/env bash
# Runs weir's whole test suite, installing what it needs first:
#   - what the build needs (scripts/setup.sh: libclang-dev)
#   - the test broker: tansu 0.6.0 with its in-memory storage (about 10 min, once)
# then checks formatting and lints (clippy, warnings are errors), and runs the
# tests. Everything builds in the release profile, the one the example runs
# on, so the two README commands share one build. Arguments go to `cargo test`.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/setup.sh

if ! command -v tansu >/dev/null 2>&1; then
  echo "installing the test broker: cargo install tansu --version 0.6.0 --features dynostore" >&2
  CARGO_TARGET_DIR="$HOME/.cache/weir/tansu-target" \
    cargo install tansu --version 0.6.0 --features dynostore -j "$JOBS"
fi

cargo fmt --all -- --check
cargo clippy --release --workspace --all-targets -j "$JOBS" -- -D warnings
cargo test --release --workspace -j "$JOBS" "$@"

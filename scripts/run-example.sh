#!/usr/bin/env bash
# Runs the fraud-scoring example on the embedded broker, printing predictions
# (Ctrl-C stops it), after installing what the build needs (scripts/setup.sh).
# An optional first argument ending in .sql picks another pipeline (e.g.
# examples/fraud/windows.sql); further arguments go to `weir run`.
# KAFKA_BROKERS=host:port points the same SQL at a real Kafka cluster.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/setup.sh
pipeline=examples/fraud/pipeline.sql
if [[ "${1:-}" == *.sql ]]; then
  pipeline=$1
  shift
fi
exec cargo run --release -j "$JOBS" -- run "$pipeline" "$@"

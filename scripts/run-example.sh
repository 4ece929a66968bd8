#!/usr/bin/env bash
# Runs the fraud-scoring example on the embedded broker, printing predictions
# (Ctrl-C stops it), after installing what the build needs (scripts/setup.sh).
# Extra arguments go to `weir run`; KAFKA_BROKERS=host:port points the same SQL
# at a real Kafka cluster.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/setup.sh
exec cargo run --release -j "$JOBS" -- run examples/fraud/pipeline.sql "$@"

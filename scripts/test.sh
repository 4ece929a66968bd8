#!/usr/bin/env bash
# Runs weir's whole test suite, installing what it needs first:
#   - what the build needs (scripts/setup.sh: libclang-dev, and the TLS, SASL
#     and curl -dev packages librdkafka links against)
#   - the test broker: Apache Kafka from Maven Central (scripts/kafka.sh
#     fetch: about 10 s, once; needs Java 17+ and mvn), started once for the
#     run with a listener per security protocol, and stopped at the end
# then checks formatting and lints (clippy, warnings are errors), and runs the
# tests. Everything builds in the release profile, the one the example runs
# on, so the two README commands share one build. Arguments go to `cargo test`.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/setup.sh

scripts/kafka.sh fetch >/dev/null
kafka_dir="$(mktemp -d -t weir-kafka-XXXXXX)"
stop_kafka() { scripts/kafka.sh stop "$kafka_dir" >/dev/null 2>&1 || true; rm -rf "$kafka_dir"; }
trap stop_kafka EXIT

cargo fmt --all -- --check
cargo clippy --release --workspace --all-targets -j "$JOBS" -- -D warnings
# The broker starts once the build is done (it would only slow the build).
cargo test --release --workspace -j "$JOBS" --no-run "$@"
WEIR_KAFKA_OWNER_PID=$$ scripts/kafka.sh start "$kafka_dir" >/dev/null
export WEIR_TEST_KAFKA="$kafka_dir/listeners.env"
cargo test --release --workspace -j "$JOBS" "$@"

#!/usr/bin/env bash
# Measures weir's state figures on tansu, with the debug build (dependencies
# at opt-level 2, as the tests use them):
#   - checkpoint duration and size with 1M keys of window state
#   - restore time from the changelog for 1M keys (state directory deleted)
#   - recovery time after kill -9: restart to caught up with the input
# Usage: scripts/measure-recovery.sh [KEYS]   (default 1000000)
# Needs: tansu (see scripts/test.sh), python3 with confluent-kafka, and
# `cargo build --workspace --tests` done (it uses target/debug/weir).
set -euo pipefail
cd "$(dirname "$0")/.."
KEYS="${1:-1000000}"
TARGET="${CARGO_TARGET_DIR:-$HOME/.cache/weir/target}"
WEIR="$TARGET/debug/weir"
TANSU="${TANSU_BIN:-$HOME/.cargo/bin/tansu}"
WORK="$(mktemp -d /tmp/weir-measure-XXXX)"
PORT=$((20000 + RANDOM % 20000))
BROKERS="127.0.0.1:$PORT"
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$WORK"' EXIT

RUST_LOG=error "$TANSU" broker --listener-url "tcp://$BROKERS" \
  --advertised-listener-url "tcp://$BROKERS" --storage-engine memory://tansu/ \
  >/dev/null 2>&1 &
for _ in $(seq 100); do (echo >/dev/tcp/127.0.0.1/$PORT) 2>/dev/null && break; sleep 0.1; done

# Two events per key, all in one hour: every key stays in window state.
python3 - "$BROKERS" "$KEYS" <<'EOF'
import sys, time
from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient, NewTopic
brokers, keys = sys.argv[1], int(sys.argv[2])
AdminClient({"bootstrap.servers": brokers}).create_topics([NewTopic("m-in", 1, 1)])["m-in"].result()
p = Producer({"bootstrap.servers": brokers, "linger.ms": 20, "enable.idempotence": True})
start = time.time()
for i in range(2 * keys):
    k = i % keys
    ts = 1767225600000 + (i * 3_500_000) // (2 * keys)
    while True:
        try:
            p.produce("m-in", f'{{"k":{k},"v":{i % 97},"ts":{ts}}}'.encode())
            break
        except BufferError:
            p.poll(0.05)
p.flush()
print(f"produced {2 * keys} events in {time.time() - start:.1f} s", file=sys.stderr)
EOF

cat >"$WORK/m.sql" <<EOF
SET 'checkpoint.interval' = '5s';
SET 'state.cache.size' = '64mb';
CREATE TABLE ev (k BIGINT, v DOUBLE, ts TIMESTAMP(3), WATERMARK FOR ts AS ts)
  WITH ('connector' = 'kafka', 'topic' = 'm-in', 'format' = 'json',
  'properties.bootstrap.servers' = '$BROKERS', 'scan.startup.mode' = 'earliest-offset',
  'scan.bounded.mode' = 'latest-offset');
CREATE TABLE out WITH ('connector' = 'kafka', 'topic' = 'm-out', 'format' = 'json',
  'properties.bootstrap.servers' = '$BROKERS');
INSERT INTO out SELECT k, count(*) AS n, sum(v) AS s
FROM TABLE(TUMBLE(TABLE ev, DESCRIPTOR(ts), INTERVAL '1' HOUR))
GROUP BY k, window_start, window_end;
EOF

run() { # run NAME [kill-after-seconds]
  local log="$WORK/$1.log"
  local t0; t0=$(date +%s.%N)
  RUST_LOG=weir=debug "$WEIR" run --print false --group-id m --state-dir "$WORK/state" "$WORK/m.sql" 2>"$log" &
  local pid=$!
  if [ -n "${2:-}" ]; then sleep "$2"; kill -9 $pid; wait $pid 2>/dev/null || true; else wait $pid; fi
  echo "$(date +%s.%N) - $t0" | bc
}

echo "== uninterrupted run (bounded): $((2 * KEYS)) events, $KEYS keys"
full=$(run full)
echo "wall: $full s"
grep -o "checkpoint [0-9]* in [0-9]* ms ([0-9]* of it in the store), [0-9]* bytes" "$WORK/full.log" | tail -3
grep "done:" "$WORK/full.log" || true

echo "== killed at 60% of that, then restarted"
rm -rf "$WORK/state"
# Fresh group and changelog: a new group id per phase.
sed -i "s/'m-out'/'m-out2'/" "$WORK/m.sql"
kill_at=$(echo "$full * 0.6" | bc)
run killed "$kill_at" >/dev/null
grep -o "checkpoint [0-9]* in [0-9]* ms ([0-9]* of it in the store), [0-9]* bytes" "$WORK/killed.log" | tail -1
rec=$(run recovered)
echo "restart to end of input: $rec s (an uninterrupted run's last 40%: about $(echo "$full * 0.4" | bc) s)"
grep -E "restored checkpoint|rebuilt" "$WORK/recovered.log" | sed 's/^.*INFO //'

echo "== state directory deleted: restore from the changelog"
rm -rf "$WORK/state"
rest=$(run from-changelog)
grep -E "rebuilt|restored checkpoint" "$WORK/from-changelog.log" | sed 's/^.*INFO //'
echo "run wall (restore + nothing left to read): $rest s"

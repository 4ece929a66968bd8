#!/usr/bin/env bash
# Measures weir's state figures against tansu, with the release build (the
# one the tests and the example use):
#   A  checkpoint duration and size with KEYS keys of open window state
#   A' restore time from the changelog for those keys (state directory deleted)
#   B  recovery after kill -9: from the restart until caught up with the input
# Usage: scripts/measure-recovery.sh [KEYS]   (default 1000000)
# Needs tansu (scripts/test.sh installs it), python3 with confluent-kafka, and
# a built target/release/weir (scripts/test.sh or cargo build --release builds it).
set -euo pipefail
cd "$(dirname "$0")/.."
KEYS="${1:-1000000}"
EVENTS=$((2 * KEYS))
TARGET="${CARGO_TARGET_DIR:-$HOME/.cache/weir/target}"
WEIR="$TARGET/release/weir"
TANSU="${TANSU_BIN:-$HOME/.cargo/bin/tansu}"
WORK="$(mktemp -d /tmp/weir-measure-XXXX)"
PORT=$((20000 + RANDOM % 20000))
BROKERS="127.0.0.1:$PORT"
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$WORK"' EXIT

RUST_LOG=error "$TANSU" broker --listener-url "tcp://$BROKERS" \
  --advertised-listener-url "tcp://$BROKERS" --storage-engine memory://tansu/ \
  >/dev/null 2>&1 &
for _ in $(seq 100); do (echo >/dev/tcp/127.0.0.1/$PORT) 2>/dev/null && break; sleep 0.1; done

# Two events per key, all within one hour: every key stays in window state.
python3 - "$BROKERS" "$KEYS" <<'EOF'
import sys, time
from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient, NewTopic
brokers, keys = sys.argv[1], int(sys.argv[2])
admin = AdminClient({"bootstrap.servers": brokers})
admin.create_topics([NewTopic("m-in", 1, 1)])["m-in"].result()
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
print(f"produced {2 * keys} events in {time.time() - start:.1f} s")
EOF

pipeline() { # pipeline OUTPUT_TOPIC
  cat >"$WORK/m.sql" <<EOF
SET 'checkpoint.interval' = '1s';
SET 'state.cache.size' = '64mb';
CREATE TABLE ev (k BIGINT, v DOUBLE, ts TIMESTAMP(3), WATERMARK FOR ts AS ts)
  WITH ('connector' = 'kafka', 'topic' = 'm-in', 'format' = 'json',
  'properties.bootstrap.servers' = '$BROKERS', 'scan.startup.mode' = 'earliest-offset');
CREATE TABLE out WITH ('connector' = 'kafka', 'topic' = '$1', 'format' = 'json',
  'properties.bootstrap.servers' = '$BROKERS');
INSERT INTO out SELECT k, count(*) AS n, sum(v) AS s
FROM TABLE(TUMBLE(TABLE ev, DESCRIPTOR(ts), INTERVAL '1' HOUR))
GROUP BY k, window_start, window_end;
EOF
}
now() { date +%s.%N; }
since() { echo "$(now) - $1" | bc; }
start() { # start GROUP LOG: an unbounded run in the background, pid in $PID
  WEIR_LOG=weir=debug "$WEIR" run --print false --group-id "$1" \
    --state-dir "$WORK/state-$1" "$WORK/m.sql" 2>"$WORK/$2.log" &
  PID=$!
}
wait_for() { # wait_for LOG PATTERN (10 min at most)
  for _ in $(seq 6000); do grep -q "$2" "$WORK/$1.log" && return 0; sleep 0.1; done
  echo "timed out waiting for '$2' in $1.log" >&2
  tail -5 "$WORK/$1.log" >&2
  exit 1
}
stop() { kill -TERM "$PID"; wait "$PID" || true; }
checkpoints() {
  grep -o "checkpoint [0-9]* in [0-9]* ms ([0-9]* of it in the store), [0-9]* bytes" "$WORK/$1.log"
}

echo "== A: $EVENTS events, $KEYS keys, one window open; Ctrl-C once caught up"
pipeline m-out-a
t0=$(now)
start a a1
wait_for a1 "input offsets summing to $EVENTS"
catch_up=$(since "$t0")
echo "caught up with the input in $catch_up s"
stop
echo "largest checkpoints:"
checkpoints a1 | sort -t, -k2 -n | tail -3

echo "== A': state directory deleted; restore from the changelog"
rm -rf "$WORK/state-a"
start a a2
wait_for a2 "rebuilt checkpoint"
grep -o "rebuilt checkpoint.*" "$WORK/a2.log"
stop

echo "== B: kill -9 at 60% of A's catch-up time; restart; time until caught up"
pipeline m-out-b
start b b1
sleep "$(echo "$catch_up * 0.6" | bc)"
kill -9 "$PID"
wait "$PID" 2>/dev/null || true
echo "killed; last checkpoint: $(checkpoints b1 | tail -1)"
grep -o "input offsets summing to [0-9]*" "$WORK/b1.log" | tail -1
t0=$(now)
start b b2
wait_for b2 "restored checkpoint"
restored=$(since "$t0")
wait_for b2 "input offsets summing to $EVENTS"
echo "restart: state restored after $restored s, caught up after $(since "$t0") s"
grep -o "restored checkpoint.*" "$WORK/b2.log"
stop

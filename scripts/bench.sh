#!/usr/bin/env bash
# Runs every benchmark weir has (`make bench`) and writes a BENCHMARKS.md-ready
# report with the machine's details into bench/results/<UTC time>/:
#   1. end to end on a tansu broker: weir, weir without predict, a bare
#      librdkafka consumer, a bare librdkafka producer writing the pipeline's
#      output records (bench/weir_bench.py)
#   2. the peers on the same data: the Python baseline (bench/run.py python),
#      Flink if its venv exists (bench/run.py flink), and beside it weir on
#      Flink's terms, reading the same file (weir_bench.py's weir-file), with
#      the two outputs compared (bench/compare_windows.py)
#   3. latency: weir scoring every event at fixed rates, at-least-once and
#      exactly-once, beside the broker alone (bench/latency_bench.py)
#   4. state size: weir on 1M keys open at once (bench/many_keys.py's data,
#      bench/weir_bench.py)
#   5. worker cluster: 1 and 2 `weir worker`s, direct and through a
#      repartition topic, on the peers' events (bench/cluster_bench.py)
#   6. operators (criterion: scoring, JSON, HOP windows), then onnxruntime on
#      the same scoring rows right after (bench/scoring/ort_bench.py)
#   7. bench/report.py: medians (min-max) and the ratios, as markdown
# Installs what it needs first (libclang-dev via scripts/setup.sh, tansu as
# scripts/test.sh does, the Python packages with pip --user, Flink in its own
# venv at BENCH_FLINK_PYTHON's).
#
# Knobs (environment), defaults in brackets; bench/README.md has more:
#   BENCH_SKIP          comma list of steps to leave out: tansu,pip,build,e2e,
#                       python,flink,latency,state,cluster,criterion,ort []
#   BENCH_EVENTS        events for weir's end-to-end runs [5000000]
#   BENCH_PEER_EVENTS   events for the Python baseline, Flink and the cluster
#                       runs [1000000]
#   BENCH_REPEAT        runs of each weir variant [3]
#   BENCH_PEER_REPEAT   runs of the Python baseline and Flink [1]
#   BENCH_VARIANTS      weir_bench.py variants [weir,weir-no-predict,bare,bare-producer]
#   BENCH_PER_MESSAGE   1: also the per-message Python baseline (~6 min per 1M) [0]
#   BENCH_LAT_RATES     latency: events/s, comma list [20000,100000]
#   BENCH_LAT_DURATION  latency: measured seconds per (rate, mode) [20]
#   BENCH_LAT_REPEAT    latency: runs of each (rate, mode) [1]
#   BENCH_KEYS_EVENTS   state size: events (bench/many_keys.py) [2000000]
#   BENCH_KEYS_CARDS    state size: distinct cards, i.e. keys open at once [1000000]
#   BENCH_KEYS_REPEAT   state size: runs of weir (~4.5 min each) [1]
#   BENCH_CLUSTER_REPEAT cluster: runs of each (workers, repartition) [1]
#   BENCH_DATA          where the generated event files are kept [~/.cache/weir/bench]
#   BENCH_RESULTS       the results directory [bench/results/<UTC time>]
#   BENCH_FLINK_PYTHON  the Flink venv's python [~/.venvs/flink/bin/python]
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
. scripts/setup.sh # CARGO_TARGET_DIR (default ~/.cache/weir/target), PATH, JOBS, libclang-dev

BENCH_SKIP="${BENCH_SKIP:-}"
BENCH_EVENTS="${BENCH_EVENTS:-5000000}"
BENCH_PEER_EVENTS="${BENCH_PEER_EVENTS:-1000000}"
BENCH_REPEAT="${BENCH_REPEAT:-3}"
BENCH_PEER_REPEAT="${BENCH_PEER_REPEAT:-1}"
BENCH_VARIANTS="${BENCH_VARIANTS:-weir,weir-no-predict,bare,bare-producer}"
BENCH_PER_MESSAGE="${BENCH_PER_MESSAGE:-0}"
BENCH_LAT_RATES="${BENCH_LAT_RATES:-20000,100000}"
BENCH_LAT_DURATION="${BENCH_LAT_DURATION:-20}"
BENCH_LAT_REPEAT="${BENCH_LAT_REPEAT:-1}"
BENCH_KEYS_EVENTS="${BENCH_KEYS_EVENTS:-2000000}"
BENCH_KEYS_CARDS="${BENCH_KEYS_CARDS:-1000000}"
BENCH_KEYS_REPEAT="${BENCH_KEYS_REPEAT:-1}"
BENCH_CLUSTER_REPEAT="${BENCH_CLUSTER_REPEAT:-1}"
BENCH_DATA="${BENCH_DATA:-$HOME/.cache/weir/bench}"
export BENCH_FLINK_PYTHON="${BENCH_FLINK_PYTHON:-$HOME/.venvs/flink/bin/python}" # machine.py reads it too
RES="${BENCH_RESULTS:-$ROOT/bench/results/$(date -u +%Y%m%dT%H%M%SZ)}"
PARTITIONS=4 # the input topic's partitions, the same for every step that makes one

STEPS=(tansu pip build e2e python flink latency state cluster criterion ort)
for s in ${BENCH_SKIP//,/ }; do
  [[ " ${STEPS[*]} " == *" $s "* ]] || { echo "BENCH_SKIP: unknown step '$s' (steps: ${STEPS[*]})" >&2; exit 2; }
done
skip() { [[ ",$BENCH_SKIP," == *",$1,"* ]]; }

mkdir -p "$RES"
RES=$(cd "$RES" && pwd)
# Everything printed also goes to bench.log: the raw per-run JSON lines, cargo's
# and criterion's output.
exec > >(tee -a "$RES/bench.log") 2>&1

# run CMD...: runs a command and records it in commands.txt (for the report).
# The echo goes to stderr so that `run cmd >file` captures cmd's output only.
run() {
  local a q line=""
  for a in "$@"; do
    q=$a
    [[ $a =~ ^[][A-Za-z0-9_./:=,@%+-]+$ ]] || printf -v q '%q' "$a" # quote only when needed
    line+="${line:+ }$q"
  done
  echo "$line" >>"$RES/commands.txt"
  echo "+ $*" >&2
  "$@"
}

step() { echo; echo "=== $* ($(date -u +%H:%M:%S) UTC)"; }

FLINK_TMP=""
WEIR_FILE_OUT="" # weir-file's kept output (~750 MB per 1M events), removed once compared
finish() {
  local rc=$?
  if [[ -n $FLINK_TMP ]]; then rm -rf "$FLINK_TMP"; fi
  if [[ -n $WEIR_FILE_OUT ]]; then rm -f "$WEIR_FILE_OUT"; fi
  if ((rc != 0)); then
    echo "bench.sh failed ($rc); the results so far are in $RES (python3 bench/report.py $RES)" >&2
  fi
}
trap finish EXIT

# ----------------------------------------------------------------- installs

run_flink=0
if ! skip flink; then
  if [[ ! -x $BENCH_FLINK_PYTHON ]] && ! skip pip; then
    # Its own venv: apache-flink pins numpy and protobuf versions that break
    # onnx in the main environment. About 3 min and 1.5 GB, once.
    venv=$(dirname "$(dirname "$BENCH_FLINK_PYTHON")")
    step "installing Flink into the venv $venv (about 3 min, once)"
    python3 -m venv "$venv"
    "$venv/bin/python" -m pip install apache-flink psutil
  fi
  if [[ -x $BENCH_FLINK_PYTHON ]]; then
    run_flink=1
  else
    echo "Flink: $BENCH_FLINK_PYTHON not found, skipped (bench/README.md says how to make the venv)"
  fi
fi

# The steps that run the release weir binary (the Flink step runs weir on the
# same file beside Flink); they and the Python baseline need the broker.
uses_weir=$run_flink
for s in e2e latency state cluster; do skip $s || uses_weir=1; done
needs_broker=$uses_weir
if ! skip python; then needs_broker=1; fi

if ((needs_broker)) && ! skip tansu && [[ -z ${TANSU_BIN:-} ]] && ! command -v tansu >/dev/null 2>&1; then
  step "installing the test broker (about 10 min, once)"
  # Exactly as scripts/test.sh does.
  CARGO_TARGET_DIR="$HOME/.cache/weir/tansu-target" \
    cargo install tansu --version 0.6.0 --features dynostore -j "$JOBS"
fi

if ! skip pip; then
  # module:package. onnx: ort_bench.py builds its identity graph with it.
  # (scikit-learn etc. only train the models, which are committed.)
  missing=()
  for spec in confluent_kafka:confluent-kafka onnxruntime:onnxruntime numpy:numpy onnx:onnx; do
    python3 -c "import ${spec%%:*}" 2>/dev/null || missing+=("${spec#*:}")
  done
  if ((${#missing[@]})); then
    step "installing Python packages: ${missing[*]}"
    pip_args=(install)
    # pip refuses --user inside a virtualenv; outside one, --user needs no root.
    if python3 -c 'import sys; sys.exit(sys.prefix != sys.base_prefix)'; then pip_args+=(--user); fi
    python3 -m pip "${pip_args[@]}" "${missing[@]}"
  fi
fi

# ----------------------------------------------------------------- build

if ! skip build; then
  step "build"
  if ! skip e2e; then
    run cargo build --release -j "$JOBS" --bin weir --example bare_consumer --example bare_producer
  elif ((uses_weir)); then
    run cargo build --release -j "$JOBS" --bin weir
  fi
  if ! skip criterion; then
    # Compile now so the timed step below only runs the benchmarks.
    run cargo bench -j "$JOBS" --workspace --bench operators --no-run
  fi
fi

# ----------------------------------------------------------------- data

# ensure_events N FILE: N generator events (seed 1, 100 000 cards; the data of
# bench/README.md) in FILE, generated once and kept in BENCH_DATA (delete the
# file to regenerate it, e.g. after the generator changes). 5M take ~3.5 min.
ensure_events() {
  local n=$1 f=$2
  [[ -s $f ]] && return 0
  mkdir -p "$(dirname "$f")"
  # Written under another name first so an interrupted run leaves no short file.
  run python3 bench/data.py --events "$n" --jsonl "$f.partial"
  mv "$f.partial" "$f"
}

# ensure_keys N K FILE: N events over K cards that all buy within the same 5
# minutes (bench/many_keys.py, seed 7), so the windows hold K keys at once;
# kept like ensure_events. 2M events take ~25 s.
ensure_keys() {
  local n=$1 k=$2 f=$3
  [[ -s $f ]] && return 0
  mkdir -p "$(dirname "$f")"
  run python3 bench/many_keys.py --events "$n" --cards "$k" --out "$f.partial"
  mv "$f.partial" "$f"
}

step "data"
EVENTS="$BENCH_DATA/events-$BENCH_EVENTS.jsonl"
PEER_EVENTS="$BENCH_DATA/events-$BENCH_PEER_EVENTS.jsonl"
# report.py reads the events and cards back from this name.
KEYS="$BENCH_DATA/keys-$BENCH_KEYS_EVENTS-$BENCH_KEYS_CARDS.jsonl"
if ! skip e2e; then
  ensure_events "$BENCH_EVENTS" "$EVENTS"
fi
if ! skip python || ((run_flink)) || ! skip cluster; then
  ensure_events "$BENCH_PEER_EVENTS" "$PEER_EVENTS"
fi
if ! skip state; then
  ensure_keys "$BENCH_KEYS_EVENTS" "$BENCH_KEYS_CARDS" "$KEYS"
fi

# The machine's details, just before the first timed run (the load average
# then shows whether something else is using the machine).
python3 bench/machine.py >"$RES/machine.json"

# ----------------------------------------------------------------- end to end

if ! skip e2e; then
  step "end to end: $BENCH_VARIANTS, $BENCH_EVENTS events, runs of each: $BENCH_REPEAT"
  # Variants are interleaved within each repeat, so weir's and the bare
  # consumer's run i were made back to back (report.py pairs them).
  run python3 bench/weir_bench.py --events-file "$EVENTS" --partitions "$PARTITIONS" \
    --variants "$BENCH_VARIANTS" --repeat "$BENCH_REPEAT" --log "$RES/e2e.jsonl"
fi

if ! skip python; then
  modes=micro-batch
  if [[ $BENCH_PER_MESSAGE == 1 ]]; then modes+=,per-message; fi
  step "Python baseline: $modes, $BENCH_PEER_EVENTS events, runs: $BENCH_PEER_REPEAT (~2.5 min per 1M events)"
  # The same fetch caps as bench/sql/windows.sql: tansu otherwise serves one
  # partition per fetch and the watermark stalls (bench/README.md).
  run python3 bench/run.py python --events-file "$PEER_EVENTS" --partitions "$PARTITIONS" --modes "$modes" \
    --repeat "$BENCH_PEER_REPEAT" --consumer-config fetch.max.bytes=1048576 \
    --consumer-config max.partition.fetch.bytes=262144 --log "$RES/e2e.jsonl"
fi

if ((run_flink)); then
  step "Flink and weir on the same file: $BENCH_PEER_EVENTS events, runs of each: $BENCH_PEER_REPEAT" \
    "(per 1M events: Flink ~3 min, weir ~0.5 min), then one more weir run kept and compared with Flink's"
  # Flink's job (flink_hop.py): the HOP aggregation only, file in, files out,
  # no predict, no Kafka. run.py leaves its temporary directory (the job's
  # output, ~0.9 GB per 1M events) behind; point it into one that finish()
  # removes. --keep-output moves the full runs' output files (run<i>-part-*)
  # there too, for the comparison below.
  FLINK_TMP=$(mktemp -d "${TMPDIR:-/tmp}/weir-bench-flink.XXXXXX")
  run env TMPDIR="$FLINK_TMP" python3 bench/run.py flink --events-file "$PEER_EVENTS" \
    --flink-python "$BENCH_FLINK_PYTHON" --repeat "$BENCH_PEER_REPEAT" --keep-output "$FLINK_TMP/flink-out" \
    --log "$RES/e2e.jsonl"
  # weir on Flink's terms (bench/sql/windows-file.sql): the same aggregation,
  # reading the same file with weir's filesystem source, writing to a topic.
  run python3 bench/weir_bench.py --events-file "$PEER_EVENTS" --partitions "$PARTITIONS" --variants weir-file \
    --repeat "$BENCH_PEER_REPEAT" --log "$RES/e2e.jsonl"
  # One more weir-file run, not logged, that keeps its output: weir_bench.py
  # reads the topic back inside the run, which would count in the broker's CPU
  # of a timed run. Then weir's windows against Flink's first run's (exit 1
  # when they disagree: recorded in weir-vs-flink.json's "agree", the bench
  # goes on).
  WEIR_FILE_OUT="$RES/weir-file-out.jsonl"
  run python3 bench/weir_bench.py --events-file "$PEER_EVENTS" --partitions "$PARTITIONS" --variants weir-file \
    --repeat 1 --keep-output "$WEIR_FILE_OUT"
  flink_out=("$FLINK_TMP"/flink-out/run0-*)
  if [[ ! -e ${flink_out[0]} ]]; then
    echo "weir vs Flink: Flink kept no output in $FLINK_TMP/flink-out, not compared" >&2
  elif ! run python3 bench/compare_windows.py "$WEIR_FILE_OUT" --expected "${flink_out[@]}" \
    >"$RES/weir-vs-flink.json"; then
    echo "weir vs Flink: the outputs differ or the comparison failed (weir-vs-flink.json, bench.log)" >&2
  fi
  rm -f "$WEIR_FILE_OUT"
  WEIR_FILE_OUT=""
  rm -rf "$FLINK_TMP"
  FLINK_TMP=""
fi

# ----------------------------------------------------------------- latency, state, cluster

if ! skip latency; then
  step "latency: $BENCH_LAT_RATES events/s, the broker alone, at-least-once and exactly-once, ${BENCH_LAT_DURATION} s measured," \
    "runs of each: $BENCH_LAT_REPEAT (~1 min per rate and mode)"
  # Per (rate, mode): a fresh broker and a fresh `weir run` scoring every event.
  # Mode broker first: the same producer and consumer through tansu alone (no
  # weir, one trip through the broker), the floor of weir's two trips.
  run python3 bench/latency_bench.py --rates "$BENCH_LAT_RATES" --modes broker,at-least-once,exactly-once \
    --duration "$BENCH_LAT_DURATION" --warmup 5 --partitions "$PARTITIONS" --repeat "$BENCH_LAT_REPEAT" \
    --log "$RES/latency.jsonl"
fi

if ! skip state; then
  step "state size: $BENCH_KEYS_EVENTS events over $BENCH_KEYS_CARDS keys, runs: $BENCH_KEYS_REPEAT (~4.5 min each)"
  # weir_bench.py's `weir` variant (windows.sql) on data that holds every key
  # open at once: the figure is peak RSS (target: under 1 GiB at 1M keys).
  run python3 bench/weir_bench.py --events-file "$KEYS" --partitions "$PARTITIONS" --variants weir \
    --repeat "$BENCH_KEYS_REPEAT" --log "$RES/state.jsonl"
fi

if ! skip cluster; then
  step "worker cluster: 1 and 2 workers, direct and repartitioned, $BENCH_PEER_EVENTS events," \
    "runs of each: $BENCH_CLUSTER_REPEAT (~3 min per set)"
  # windows.sql submitted to N `weir worker`s; report.py sets the figures
  # beside the `weir` variant of e2e.jsonl (CPU-s per 1M events).
  run python3 bench/cluster_bench.py --events-file "$PEER_EVENTS" --partitions "$PARTITIONS" --workers 1,2 \
    --repeat "$BENCH_CLUSTER_REPEAT" --log "$RES/cluster.jsonl"
  # Without the source's 'key.fields': through a repartition topic.
  run python3 bench/cluster_bench.py --events-file "$PEER_EVENTS" --partitions "$PARTITIONS" --workers 1,2 \
    --repartition --repeat "$BENCH_CLUSTER_REPEAT" --log "$RES/cluster.jsonl"
fi

# ----------------------------------------------------------------- operators, scoring

if ! skip criterion; then
  step "criterion: operators (~2 min)"
  CRIT="$CARGO_TARGET_DIR/criterion"
  touch "$RES/.criterion-start"
  run cargo bench -j "$JOBS" --workspace --bench operators
  # Copy only what this run wrote: target/criterion keeps every benchmark ever
  # run there, and an old one would pass for a figure of this session.
  if [[ -d $CRIT ]]; then
    (cd "$CRIT" && find . -path '*/new/estimates.json' -newer "$RES/.criterion-start" -print0) |
      while IFS= read -r -d '' f; do
        d=$(dirname "$(dirname "$f")")
        mkdir -p "$RES/criterion/$d"
        cp -r "$CRIT/$d/new" "$RES/criterion/$d/"
      done
  fi
  rm -f "$RES/.criterion-start"
fi

if ! skip ort; then
  # Right after criterion, so the two sides of the scoring table see the same
  # machine state.
  step "onnxruntime: the same models and rows (~1.5 min)"
  run python3 bench/scoring/ort_bench.py --log "$RES/ort.jsonl"
fi

# ----------------------------------------------------------------- report

step "report"
run python3 bench/report.py "$RES" >"$RES/BENCHMARKS.md"
echo "report: $RES/BENCHMARKS.md"

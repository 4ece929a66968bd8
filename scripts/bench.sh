#!/usr/bin/env bash
# Runs every benchmark weir has (`make bench`) and writes a BENCHMARKS.md-ready
# report with the machine's details into bench/results/<UTC time>/:
#   1. end to end on a tansu broker: weir, weir without predict, a bare
#      librdkafka consumer (bench/weir_bench.py)
#   2. the peers on the same data: the Python baseline (bench/run.py python),
#      Flink if its venv exists (bench/run.py flink)
#   3. operators (criterion: scoring, JSON, HOP windows), then onnxruntime on
#      the same scoring rows right after (bench/scoring/ort_bench.py)
#   4. bench/report.py: medians (min-max) and the ratios, as markdown
# Installs what it needs first (libclang-dev via scripts/setup.sh, tansu as
# scripts/test.sh does, the Python packages with pip --user).
#
# Knobs (environment), defaults in brackets; bench/README.md has more:
#   BENCH_SKIP          comma list of steps to leave out: tansu,pip,build,e2e,
#                       python,flink,criterion,ort []
#   BENCH_EVENTS        events for weir's end-to-end runs [5000000]
#   BENCH_PEER_EVENTS   events for the Python baseline and Flink [1000000]
#   BENCH_REPEAT        runs of each weir variant [3]
#   BENCH_PEER_REPEAT   runs of the Python baseline and Flink [1]
#   BENCH_VARIANTS      weir_bench.py variants [weir,weir-no-predict,bare]
#   BENCH_PER_MESSAGE   1: also the per-message Python baseline (~6 min per 1M) [0]
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
BENCH_VARIANTS="${BENCH_VARIANTS:-weir,weir-no-predict,bare}"
BENCH_PER_MESSAGE="${BENCH_PER_MESSAGE:-0}"
BENCH_DATA="${BENCH_DATA:-$HOME/.cache/weir/bench}"
export BENCH_FLINK_PYTHON="${BENCH_FLINK_PYTHON:-$HOME/.venvs/flink/bin/python}" # machine.py reads it too
RES="${BENCH_RESULTS:-$ROOT/bench/results/$(date -u +%Y%m%dT%H%M%SZ)}"
PARTITIONS=4 # the input topic's partitions, the same for weir and the Python baseline

STEPS=(tansu pip build e2e python flink criterion ort)
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
finish() {
  local rc=$?
  if [[ -n $FLINK_TMP ]]; then rm -rf "$FLINK_TMP"; fi
  if ((rc != 0)); then
    echo "bench.sh failed ($rc); the results so far are in $RES (python3 bench/report.py $RES)" >&2
  fi
}
trap finish EXIT

# ----------------------------------------------------------------- installs

needs_broker=1
if skip e2e && skip python; then needs_broker=0; fi

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
    run cargo build --release -j "$JOBS" --bin weir --example bare_consumer
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

run_flink=0
if ! skip flink; then
  if [[ -x $BENCH_FLINK_PYTHON ]]; then
    run_flink=1
  else
    echo "Flink: $BENCH_FLINK_PYTHON not found, skipped (bench/README.md says how to make the venv)"
  fi
fi

step "data"
EVENTS="$BENCH_DATA/events-$BENCH_EVENTS.jsonl"
PEER_EVENTS="$BENCH_DATA/events-$BENCH_PEER_EVENTS.jsonl"
if ! skip e2e; then
  ensure_events "$BENCH_EVENTS" "$EVENTS"
fi
if ! skip python || ((run_flink)); then
  ensure_events "$BENCH_PEER_EVENTS" "$PEER_EVENTS"
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
  step "Flink: $BENCH_PEER_EVENTS events, runs: $BENCH_PEER_REPEAT (~3 min per 1M events)"
  # weir has no filesystem source yet, so there is no weir run on Flink's terms:
  # Flink's row is Flink alone (file in, files out, no predict).
  # run.py leaves its temporary directory (the job's output, ~0.9 GB per 1M
  # events) behind; point it into one that finish() removes.
  FLINK_TMP=$(mktemp -d "${TMPDIR:-/tmp}/weir-bench-flink.XXXXXX")
  run env TMPDIR="$FLINK_TMP" python3 bench/run.py flink --events-file "$PEER_EVENTS" \
    --flink-python "$BENCH_FLINK_PYTHON" --repeat "$BENCH_PEER_REPEAT" --log "$RES/e2e.jsonl"
  rm -rf "$FLINK_TMP"
  FLINK_TMP=""
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

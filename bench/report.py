#!/usr/bin/env python3
"""Turns a `make bench` results directory into BENCHMARKS.md-ready markdown.

    python3 bench/report.py bench/results/20261122T090000Z > BENCHMARKS-draft.md

Reads what scripts/bench.sh leaves in the directory; whatever is missing makes
its section say "not run":

  machine.json     bench/machine.py: CPU, memory, kernel, versions, git HEAD
  e2e.jsonl        one JSON object per run from bench/weir_bench.py (kind weir,
                   weir-no-predict, bare, bare-producer, weir-file) and
                   bench/run.py (kind python with a mode, flink-full,
                   flink-small)
  weir-vs-flink.json  bench/compare_windows.py: weir-file's output against
                   Flink's (flink-full's first run)
  latency.jsonl    bench/latency_bench.py (kind latency), one per (rate, mode) run
  state.jsonl      bench/weir_bench.py's weir variant on bench/many_keys.py's
                   events (the file name keys-<events>-<cards>.jsonl gives
                   the keys)
  cluster.jsonl    bench/cluster_bench.py (kind cluster), direct and with
                   --repartition
  criterion/       criterion's output of `cargo bench --bench operators`:
                   <id>/new/estimates.json (ns per iteration) and
                   <id>/new/benchmark.json (throughput {"Elements": rows})
  ort.jsonl        bench/scoring/ort_bench.py ("summary" lines per model, batch)
  commands.txt     the commands bench.sh ran, in order

Every figure is the median over the runs with (min-max) beside it; a figure
from one run has no spread. Criterion's figures are its median estimate with
its 95 % confidence interval in brackets (criterion's samples are not
separate runs). Ratios are taken within one results directory, i.e. measured
in the same session on the same machine.
"""

import glob
import json
import os
import re
import statistics
import sys

SCORE_MODELS = ["lr", "mlp", "rf", "gbt", "fraud-per-event"]
BATCHES = [1, 64, 1024]


# ---------------------------------------------------------------- formatting

def num(v):
    """README style: space as the thousands separator, fewer decimals as values grow."""
    if v is None:
        return "-"
    if isinstance(v, int) or (isinstance(v, float) and v.is_integer() and abs(v) >= 1e3):
        return "{:,}".format(int(v)).replace(",", " ")
    a = abs(v)
    if a >= 100:
        return "{:,.0f}".format(v).replace(",", " ")
    if a >= 10:
        return "%.1f" % v
    return "%.2f" % v


def spread(vals):
    """'median (min-max)' over the non-missing values; just the value for one run."""
    vals = [v for v in vals if v is not None]
    if not vals:
        return "-"
    med = statistics.median(vals)
    if len(vals) == 1 or num(min(vals)) == num(max(vals)):
        return num(med)
    return "%s (%s-%s)" % (num(med), num(min(vals)), num(max(vals)))


def ratio_text(vals, pct=False):
    vals = [v for v in vals if v is not None]
    if not vals:
        return "-"
    f = (lambda v: "%.0f %%" % (v * 100)) if pct else (lambda v: "%.2fx" % v if v < 10 else "%.1fx" % v)
    med = statistics.median(vals)
    if len(vals) == 1 or f(min(vals)) == f(max(vals)):
        return "**%s**" % f(med)
    return "**%s** (%s-%s)" % (f(med), f(min(vals)), f(max(vals)))


def duration_ns(ns):
    for unit, scale in (("s", 1e9), ("ms", 1e6), ("µs", 1e3)):
        if ns >= scale:
            return "%s %s" % (num(ns / scale), unit)
    return "%s ns" % num(ns)


def load_jsonl(path):
    if not os.path.exists(path):
        return []
    out = []
    with open(path) as fh:
        for line in fh:
            line = line.strip()
            if line.startswith("{"):
                out.append(json.loads(line))
    return out


# ---------------------------------------------------------------- machine

def machine_section(res, timed):
    """timed: [(what, runs)] of the steps whose runs record loadavg_before."""
    print("## Machine\n")
    path = os.path.join(res, "machine.json")
    if not os.path.exists(path):
        print("not run (no machine.json)\n")
        return
    m = json.load(open(path))
    mem = m.get("mem_total_kib")
    rows = [
        ("measured", m.get("time_utc")),
        ("CPU", "%s cores (`nproc`), `model name: %s`" % (m.get("nproc"), m.get("cpu_model"))),
        ("memory", "%.1f GiB (MemTotal %s kB), swap %s kB" % (mem / 1048576, num(mem), num(m.get("swap_total_kib")))
         if mem else None),
        ("OS, kernel", "%s, %s" % (m.get("os"), m.get("kernel"))),
        ("weir", "`%s`%s" % (m.get("git_head"), " (with uncommitted changes)" if m.get("git_dirty") else "")
         if m.get("git_head") else None),
        ("Rust", m.get("rustc")),
        ("Python", ", ".join("%s %s" % (k, m[v]) for k, v in (
            ("Python", "python"), ("onnxruntime", "onnxruntime"), ("numpy", "numpy"),
            ("confluent-kafka", "confluent_kafka"), ("librdkafka", "librdkafka")) if m.get(v))),
        ("broker", "%s (in-memory storage)" % m["tansu"] if m.get("tansu") else None),
        ("Flink", "apache-flink %s, %s" % (m["pyflink"], m.get("java")) if m.get("pyflink") else None),
        ("load average at start", " / ".join("%.2f" % x for x in m.get("loadavg") or []) + " (1, 5, 15 min)"),
    ]
    for what, recs in timed:
        la = [r["loadavg_before"] for r in recs if r.get("loadavg_before") is not None]
        if la:
            rng = "%.2f" % min(la) if "%.2f" % min(la) == "%.2f" % max(la) else "%.2f-%.2f" % (min(la), max(la))
            rows.append(("load average before each %s run" % what, "%s (1 min)" % rng))
    print("| | |\n| --- | --- |")
    for k, v in rows:
        if v:
            print("| %s | %s |" % (k, v))
    print()


# ---------------------------------------------------------------- end to end

KIND_ORDER = ["weir", "weir-no-predict", "bare", "bare-producer", "python", "weir-file", "flink-full",
              "flink-small"]
MODE_ORDER = ["micro-batch", "per-message"]


def label(kind, mode, cc, events=None):
    text = {
        "weir": "weir: HOP features + predict + JSON sink",
        "weir-no-predict": "weir without predict",
        "bare": "bare consumer (librdkafka reads the topic, nothing else)",
        "weir-file": "weir on Flink's terms: HOP aggregation only (events file in, topic out; no predict)",
        "flink-full": "Flink: HOP aggregation only (file in, files out; no predict, no Kafka), job",
        "flink-small": "Flink, first events only (the fixed cost of a job)",
    }.get(kind)
    if kind == "python":
        text = "Python baseline, %s" % mode
        if cc:
            text += " (%s)" % ", ".join("`%s`" % c for c in cc)
    if kind == "bare-producer":
        # cc: weir_bench.py's producer_args (WEIR_BENCH_PRODUCER_ARGS), if any.
        text = ("bare producer (librdkafka writes the pipeline's %s output records, nothing else)"
                % ("%.2fM" % (events / 1e6) if events else "?"))
        if cc:
            text += " (%s)" % ", ".join("`%s`" % c for c in cc)
    return text or kind


def metrics(r):
    """The table's columns for one run, whichever script wrote it."""
    k = r["kind"]
    flink = k.startswith("flink")
    return {
        "events_per_s": r.get("events_per_s"),
        "cpu_per_m": r.get("cpu_s_per_million_events"),
        "rss": r.get("java_peak_rss_mib") if flink else r.get("peak_rss_mib"),
        "out": r.get("windows") if flink else r.get("predictions") if k == "python" else r.get("records_out"),
        "broker": r.get("broker_cpu_s"),
    }


def group_e2e(recs):
    groups = {}
    for r in recs:
        key = (r["kind"], r.get("mode") or "", tuple(r.get("consumer_config") or r.get("producer_args") or ()),
               r.get("events"))
        groups.setdefault(key, []).append(r)

    def order(key):
        kind, mode, cc, events = key
        ki = KIND_ORDER.index(kind) if kind in KIND_ORDER else len(KIND_ORDER)
        mi = MODE_ORDER.index(mode) if mode in MODE_ORDER else len(MODE_ORDER)
        return (ki, mi, len(cc), -(events or 0))
    return [(k, groups[k]) for k in sorted(groups, key=order)]


def ratios(num_runs, den_runs, paired):
    """Per-run ratios num/den of CPU per million events. Runs of weir_bench.py
    with the same index were made back to back, so they are paired; otherwise
    every run of one side is divided by every run of the other."""
    a = {r.get("run"): r["cpu_s_per_million_events"] for r in num_runs if r.get("cpu_s_per_million_events")}
    b = {r.get("run"): r["cpu_s_per_million_events"] for r in den_runs if r.get("cpu_s_per_million_events")}
    if paired and a.keys() == b.keys():
        return [a[k] / b[k] for k in a], "paired by run"
    return [x / y for x in a.values() for y in b.values()], "over all pairs of runs"


def flink_marginal(full, small):
    """Flink's CPU per million events without the fixed cost of a job: (full job
    CPU - small job CPU) / (full events - small events), runs paired by index
    (run.py makes the small and the full run back to back)."""
    s = {r.get("run"): r for r in small}
    out = []
    for r in full:
        q = s.get(r.get("run"))
        if q and r.get("job_cpu_s") is not None and q.get("job_cpu_s") is not None and r["events"] > q["events"]:
            out.append(dict(run=r.get("run"), cpu_s_per_million_events=(r["job_cpu_s"] - q["job_cpu_s"]) /
                            (r["events"] - q["events"]) * 1e6))
    return out


def e2e_section(recs):
    print("## End to end\n")
    if not recs:
        print("not run (no e2e.jsonl)\n")
        return
    groups = group_e2e(recs)
    print("Per run: a fresh tansu broker holding the input topic (4 partitions unless said), then the pipeline "
          "reads it to its end. CPU-s are the process's own (user + sys, all threads) per million input events; "
          "the broker's CPU during the run is beside it, not included. Median (min-max) over the runs.\n")
    if any(k[0] == "bare-producer" for k, _ in groups):
        print("The bare producer's row counts records, not events: its events, events/s and CPU-s per 1M are "
              "records produced, records/s and CPU-s per 1M records (its CPU-s in all beside them).\n")
    print("| | events | runs | events/s | CPU-s per 1M events | peak RSS MiB | records out | broker CPU-s |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for (kind, mode, cc, events), rs in groups:
        ms = [metrics(r) for r in rs]
        col = lambda f: spread([m[f] for m in ms])  # noqa: E731
        cpu = col("cpu_per_m")
        if kind == "bare-producer":
            cpu = "%s per 1M records (%s CPU-s in all)" % (
                spread([r.get("cpu_s_per_million_records") for r in rs]), spread([r.get("cpu_s") for r in rs]))
        print("| %s | %s | %d | %s | %s | %s | %s | %s |" % (
            label(kind, mode, cc, events), num(events), len(rs), col("events_per_s"), cpu, col("rss"),
            col("out"), col("broker")))
    print()

    by_kind = {}
    for (kind, mode, cc, events), rs in groups:
        by_kind.setdefault(kind, []).append(((mode, cc, events), rs))
    # weir's reference group: the first listed (most events) of each weir variant.
    ref = {k: by_kind[k][0] for k in ("weir", "weir-no-predict", "bare", "bare-producer") if k in by_kind}

    lines = []
    if "weir" in ref and "bare" in ref:
        (_, _, ev), w = ref["weir"]
        (_, _, evb), b = ref["bare"]
        vals, how = ratios(w, b, paired=ev == evb)
        lines.append("weir's CPU per event is %s the bare consumer's (%s): the cost of everything beyond "
                     "reading the topic" % (ratio_text(vals), how))
    if "weir" in ref and "bare-producer" in ref:
        line = producer_line(ref["weir"], ref["bare-producer"])
        if line:
            lines.append(line)
    if "weir" in ref and "weir-no-predict" in ref:
        (_, _, ev), w = ref["weir"]
        (_, _, evn), n = ref["weir-no-predict"]
        vals, how = ratios(n, w, paired=ev == evn)
        lines.append("predict's share of weir's CPU, (weir - weir-no-predict) / weir: %s (%s)"
                     % (ratio_text([1 - v for v in vals], pct=True), how))
    if "weir" in ref:
        (_, _, wev), w = ref["weir"]
        for (mode, cc, ev), rs in by_kind.get("python", []):
            vals, how = ratios(rs, w, paired=False)
            lines.append("%s (%s%s)" % (cheaper(vals, "the " + label("python", mode, cc)), how,
                                        events_note(wev, ev)))
        full = by_kind.get("flink-full", [])
        small = by_kind.get("flink-small", [])
        same_file = ("weir on Flink's terms is in \"Flink on the same file\" below" if "weir-file" in by_kind
                     else "weir on Flink's terms (weir_bench.py's weir-file) was not run")
        for (mode, cc, ev), rs in full:
            vals, how = ratios(rs, w, paired=False)
            lines.append("%s (%s%s; Flink does no predict and no Kafka: %s)" % (
                cheaper(vals, "Flink's job"), how, events_note(wev, ev), same_file))
            if small:
                marg = flink_marginal(rs, small[0][1])
                if marg:
                    vals, how = ratios(marg, w, paired=False)
                    lines.append("%s (job CPU minus a %s-event job's, per extra million events: %s CPU-s; %s)" % (
                                     cheaper(vals, "Flink's marginal cost"), num(small[0][0][2]),
                                     spread([m["cpu_s_per_million_events"] for m in marg]), how))
    if lines:
        print("Ratios (CPU-s per million events, each side's own process):\n")
        for line in lines:
            print("- " + line)
        print()
    checks_e2e(groups)


def producer_line(weir_ref, prod_ref):
    """weir's CPU per event over the bare producer's CPU for the records weir
    writes per event (weir's own records out / events, so weir at any event
    count compares with the producer's per-record cost)."""
    (_, _, wev), w = weir_ref
    (_, _, pev), p = prod_ref
    w = [r for r in w if r.get("cpu_s_per_million_events") and r.get("records_out") and r.get("events")]
    p = [r for r in p if r.get("cpu_s_per_million_records")]
    if not w or not p:
        return None

    def ratio(a, b):
        # weir's CPU-s per 1M events / the producer's CPU-s for the records of 1M events
        return a["cpu_s_per_million_events"] / (b["cpu_s_per_million_records"] * a["records_out"] / a["events"])
    # Runs of one weir_bench.py call with the same index were made back to back.
    wr, pr = {r.get("run"): r for r in w}, {r.get("run"): r for r in p}
    if wr.keys() == pr.keys() and len(wr) == len(w) and len(pr) == len(p):
        vals, how = [ratio(wr[k], pr[k]) for k in wr], "paired by run"
    else:
        vals, how = [ratio(a, b) for a in w for b in p], "over all pairs of runs"
    per_m = [r["records_out"] / r["events"] * 1e6 for r in w]
    return ("weir's CPU per event is %s the bare producer's CPU for the records weir writes per event (%s; weir "
            "writes %s records per 1M events at %s events, the bare producer wrote %s records at %s CPU-s per 1M "
            "records, %s CPU-s in all): producing the output alone, at librdkafka's cost, is %s of weir's CPU"
            % (ratio_text(vals), how, spread(per_m), num(wev), num(pev),
               spread([r["cpu_s_per_million_records"] for r in p]),
               spread([r.get("cpu_s") for r in p]), ratio_text([1 / v for v in vals], pct=True)))


# ---------------------------------------------------------------- Flink on the same file

def small_num(v):
    """A relative difference: 0, or two significant digits in e-notation."""
    if v is None:
        return "-"
    return "0" if v == 0 else "%.1e" % v


def agreement_text(res):
    path = os.path.join(res, "weir-vs-flink.json")
    if not os.path.exists(path):
        return "not compared (no weir-vs-flink.json)"
    try:
        c = json.load(open(path))
    except ValueError:
        return ("**not compared**: weir-vs-flink.json is not a JSON object (compare_windows.py failed; bench.log "
                "has its error)")
    diffs = ", ".join("%s %s" % (k, small_num(v)) for k, v in (c.get("max_relative_difference") or {}).items())
    rows = "%s rows from weir, %s from Flink" % (num(c.get("result_rows")), num(c.get("expected_rows")))
    if c.get("agree"):
        return ("**agree** (`bench/compare_windows.py`: the same windows, no duplicates, n and n_merchants "
                "equal, the amounts within 1e-9 relative): %s; max relative difference: %s" % (rows, diffs or "-"))
    bad = ["%s of Flink's windows missing from weir's" % num(c.get("missing_rows")),
           "%s of weir's not in Flink's" % num(c.get("extra_rows")),
           "%s duplicate windows in weir's" % num(c.get("duplicate_result_keys"))]
    bad += ["%s: %s rows differ" % (k, num(m.get("count"))) for k, m in (c.get("mismatches") or {}).items()]
    if c.get("unparsable_result_rows") or c.get("unparsable_expected_rows"):
        bad.append("unparsable rows: %s in weir's, %s in Flink's" % (
            num(c.get("unparsable_result_rows")), num(c.get("unparsable_expected_rows"))))
    return "**disagree** (`bench/compare_windows.py`): %s; %s; max relative difference: %s" % (
        rows, ", ".join(bad), diffs or "-")


def flink_file_section(recs, res):
    print("## Flink on the same file\n")
    wf = [r for r in recs if r.get("kind") == "weir-file"]
    fl = [r for r in recs if r.get("kind") == "flink-full"]
    if not wf:
        print("not run (no weir-file runs in e2e.jsonl%s)\n" % ("; Flink's are in the end-to-end table" if fl else ""))
        return
    print("The same job on the same events file: `bench/flink_hop.py`'s HOP(1 min, 10 min) features per card "
          "(n, avg, max, stddev_pop of the amount, distinct merchants; no predict: Flink has no ONNX). Flink "
          "(`bench/run.py flink`): PyFlink's local mini-cluster, parallelism 1, the filesystem connector in and "
          "out (JSON-lines part files); events/s over the job's wall time (the JVM's start not included), CPU-s "
          "and peak RSS the JVM's. weir (`weir_bench.py --variants weir-file`): `weir run "
          "bench/sql/windows-file.sql`, weir's filesystem source in, a %s-partition topic on a fresh tansu broker "
          "out; events/s over the process's wall time (start-up included), CPU-s (user + sys, all threads) and "
          "peak RSS the process's own, the broker's not included. Median (min-max) over the runs.\n"
          % values_text(wf, "partitions"))
    groups = {}
    for r in wf + fl:
        groups.setdefault(r.get("events"), {}).setdefault(r["kind"], []).append(r)
    print("| | events | runs | events/s | CPU-s per 1M events | peak RSS MiB | records out |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for events in sorted(groups, key=lambda e: -(e or 0)):
        for kind, who in (("weir-file", "weir (filesystem source, topic out)"),
                          ("flink-full", "Flink (filesystem connector in and out)")):
            rs = groups[events].get(kind)
            if not rs:
                print("| %s | %s | not run | | | | |" % (who, num(events)))
                continue
            ms = [metrics(r) for r in rs]
            col = lambda f: spread([m[f] for m in ms])  # noqa: E731
            print("| %s | %s | %d | %s | %s | %s | %s |" % (
                who, num(events), len(rs), col("events_per_s"), col("cpu_per_m"), col("rss"), col("out")))
    print()
    lines = []
    for events in sorted(groups, key=lambda e: -(e or 0)):
        w, f = groups[events].get("weir-file"), groups[events].get("flink-full")
        if not w or not f:
            continue
        at = " at %s events" % num(events) if len(groups) > 1 else ""
        # Over all pairs of runs (not ratios(): its dicts keep one run per index, and
        # two script calls both number their runs from 0).
        vals = [b / a for a in (r.get("cpu_s_per_million_events") for r in w)
                for b in (r.get("cpu_s_per_million_events") for r in f) if a and b]
        lines.append("Flink's CPU per event / weir's%s: %s (over all pairs of runs)" % (at, ratio_text(vals)))
        eps = [a / b for a in (r.get("events_per_s") for r in w) for b in (r.get("events_per_s") for r in f)
               if a and b]
        if eps:
            lines.append("weir's events/s / Flink's%s: %s (over all pairs of runs; Flink's over the job alone, "
                         "weir's over its whole process)" % (at, ratio_text(eps)))
        rss = [b / a for a in (metrics(r)["rss"] for r in w) for b in (metrics(r)["rss"] for r in f) if a and b]
        if rss:
            lines.append("Flink's JVM's peak RSS / weir's%s: %s (over all pairs of runs)" % (at, ratio_text(rss)))
        outs = {metrics(r)["out"] for r in w + f if metrics(r)["out"] is not None}
        if len(outs) > 1:
            lines.append("records out%s **differ**: %s" % (at, ", ".join(num(o) for o in sorted(outs))))
        elif outs:
            lines.append("records out%s: %s in every run of both" % (at, num(outs.pop())))
    lines.append("weir's output against Flink's, window by window (one more weir run that kept its output, "
                 "against Flink's first run's files): %s" % agreement_text(res))
    for line in lines:
        print("- " + line)
    print()


# ---------------------------------------------------------------- latency

LAT_MODES = ["broker", "at-least-once", "exactly-once"]  # broker: tansu alone, no weir (the limit)
LAT_TARGET = (20000, "at-least-once", 50)  # issue 6 item 4: p99 < 50 ms at 20k events/s


def values_text(recs, field, fmt=str):
    """The distinct values of a setting over the runs, for the section's prose."""
    vals = sorted({r.get(field) for r in recs if r.get(field) is not None}, key=lambda v: (str(type(v)), v))
    return " / ".join(fmt(v) for v in vals) if vals else "?"


def latency_section(recs):
    print("## Latency\n")
    recs = [r for r in recs if r.get("kind") == "latency"]
    if not recs:
        print("not run (no latency.jsonl)\n")
        return
    groups = {}
    for r in recs:
        groups.setdefault((r.get("target_rate"), r.get("mode")), []).append(r)

    def order(key):
        rate, mode = key
        return (rate or 0, LAT_MODES.index(mode) if mode in LAT_MODES else len(LAT_MODES), mode or "")
    keys = sorted(groups, key=order)
    print("`bench/latency_bench.py`: `weir run` scoring every event (`predict` with `fraud.onnx`, unbounded, "
          "`checkpoint.interval` %s) fed at a fixed rate into a %s-partition topic on tansu; latency from each "
          "event's produce time to its prediction's arrival at a consumer (mode `broker`: no weir, the consumer "
          "reads the events themselves: one trip through tansu, the floor); %s s measured after %s s of warm-up; "
          "a fresh broker and weir per run. weir and tansu in cores (CPU-s per second of the measured window), "
          "weir's CPU-µs per event and peak RSS; lost / dup are summed over the runs. Median (min-max) over "
          "the runs.\n" % (values_text(recs, "checkpoint_interval"), values_text(recs, "partitions"),
                           values_text(recs, "duration_s", "{:g}".format),
                           values_text(recs, "warmup_s", "{:g}".format)))
    print("| mode | target events/s | runs | achieved events/s | p50 ms | p90 ms | p99 ms | p99.9 ms | max ms "
          "| lost / dup | weir cores | weir CPU-µs per event | weir peak RSS MiB | tansu cores |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for rate, mode in keys:
        rs = groups[(rate, mode)]
        col = lambda f: spread([r.get(f) for r in rs])  # noqa: E731
        lost = sum(r.get("lost") or 0 for r in rs)
        dup = sum(r.get("duplicates") or 0 for r in rs)
        print("| %s | %s | %d | %s | %s | %s | %s | %s | %s | %s / %s | %s | %s | %s | %s |" % (
            mode, num(rate), len(rs), col("achieved_rate"), col("p50_ms"), col("p90_ms"), col("p99_ms"),
            col("p999_ms"), col("max_ms"), num(lost), num(dup), col("weir_cpu_per_s"), col("weir_cpu_us_per_event"),
            col("weir_peak_rss_mib"), col("broker_cpu_per_s")))
    print()

    notes = []
    rate, mode, limit = LAT_TARGET
    t = groups.get((rate, mode))
    if t:
        p99 = [r["p99_ms"] for r in t if r.get("p99_ms") is not None]
        met = sum(1 for v in p99 if v < limit)
        notes.append("target (issue 6): p99 < %s ms at %s events/s, %s: p99 %s ms: %s" % (
            num(limit), num(rate), mode, spread(p99),
            "**met**" if met == len(p99) else "**not met**" if not met else
            "met in %d of %s" % (met, runs(len(p99)))))
    for rate in sorted({k[0] for k in keys if k[0]}):
        alone = [r["p99_ms"] for r in groups.get((rate, "broker"), []) if r.get("p99_ms") is not None]
        if not alone:
            continue
        for mode in LAT_MODES[1:]:
            p99 = [r["p99_ms"] for r in groups.get((rate, mode), []) if r.get("p99_ms") is not None]
            if p99:
                notes.append("%s at %s events/s: p99 %s ms through weir (two trips through the broker) against "
                             "%s ms for one trip through tansu alone (mode broker): %.1fx" % (
                                 mode, num(rate), spread(p99), spread(alone),
                                 statistics.median(p99) / statistics.median(alone)))
    dead = sum(r.get("weir_dead_lettered") or 0 for r in recs)
    notes.append("%s dead-lettered over %s" % (num(dead), runs(len(recs))))
    for key in keys:
        rs = groups[key]
        short = [r for r in rs if r.get("achieved_rate") and key[0] and r["achieved_rate"] < 0.99 * key[0]]
        if short:
            notes.append("%s at %s events/s: the producer fell short of the rate in %s (achieved %s; "
                         "`note` and `producer_behind_*_ms` in the JSON)" % (
                             key[1], num(key[0]), runs(len(short)), spread([r["achieved_rate"] for r in short])))
    gen = {}
    for r in recs:
        if r.get("producer_cpu_per_s") is not None and r.get("consumer_cpu_per_s") is not None:
            gen.setdefault(r.get("target_rate"), []).append(r["producer_cpu_per_s"] + r["consumer_cpu_per_s"])
    if gen:
        notes.append("the load generator's own cores (Python producer + consumer, on the same machine): %s" %
                     ", ".join("%s at %s/s" % (spread(gen[k]), num(k)) for k in sorted(gen, key=lambda k: k or 0)))
    print("Checks:\n")
    for n in notes:
        print("- " + n)
    print()


# ---------------------------------------------------------------- state size

STATE_TARGET_MIB = 1024  # issue 6: peak RSS under 1 GiB with 1M keys open


def keys_of(r):
    """(events, cards) from bench.sh's file name keys-<events>-<cards>.jsonl, else (None, None)."""
    m = re.search(r"keys-(\d+)-(\d+)\.jsonl$", r.get("events_file") or "")
    return (int(m.group(1)), int(m.group(2))) if m else (None, None)


def state_section(recs):
    print("## State size\n")
    recs = [r for r in recs if r.get("kind") == "weir"]
    if not recs:
        print("not run (no state.jsonl)\n")
        return
    groups = {}
    for r in recs:
        groups.setdefault((r.get("events"), keys_of(r)[1]), []).append(r)
    print("`bench/weir_bench.py`'s `weir` variant (`weir run bench/sql/windows.sql`, bounded, %s partitions) on "
          "`bench/many_keys.py`'s events: every card buys within the same 5 minutes, so the HOP(1 min, 10 min) "
          "windows hold every card's key at once, and all of them fire at the end of the input. Target: peak RSS "
          "under 1 GiB (%s MiB) with 1M keys. Median (min-max) over the runs.\n"
          % (values_text(recs, "partitions"), num(STATE_TARGET_MIB)))
    print("| events | keys (cards) | runs | peak RSS MiB | ÷ 1 GiB | CPU-s per 1M events | events/s | records out "
          "| broker CPU-s |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for (events, cards), rs in sorted(groups.items(), key=lambda kv: (kv[0][0] or 0, kv[0][1] or 0)):
        col = lambda f: spread([r.get(f) for r in rs])  # noqa: E731
        rss = [r["peak_rss_mib"] for r in rs if r.get("peak_rss_mib") is not None]
        print("| %s | %s | %d | %s | %s | %s | %s | %s | %s |" % (
            num(events), num(cards), len(rs), col("peak_rss_mib"),
            ratio_text([v / STATE_TARGET_MIB for v in rss], pct=True), col("cpu_s_per_million_events"),
            col("events_per_s"), col("records_out"), col("broker_cpu_s")))
    print()
    notes = []
    for (events, cards), rs in sorted(groups.items(), key=lambda kv: (kv[0][0] or 0, kv[0][1] or 0)):
        rss = [r["peak_rss_mib"] for r in rs if r.get("peak_rss_mib") is not None]
        under = sum(1 for v in rss if v < STATE_TARGET_MIB)
        if rss:
            notes.append("%s: peak RSS %s MiB, %s" % (
                "%s keys" % num(cards) if cards else "keys unknown (the file is not named keys-<events>-<cards>.jsonl)",
                spread(rss),
                "**under** the 1 GiB target" if under == len(rss) else
                "**above** the 1 GiB target" if not under else
                "under the 1 GiB target in %d of %s" % (under, runs(len(rss)))))
        notes.append("%s events: %s late, %s dead-lettered over %s" % (
            num(events), num(sum(r.get("late") or 0 for r in rs)),
            num(sum(r.get("dead_lettered") or 0 for r in rs)), runs(len(rs))))
        outs = {r.get("records_out") for r in rs if r.get("records_out") is not None}
        if len(outs) > 1:
            notes.append("records out at %s events **differ**: %s" % (
                num(events), ", ".join(num(o) for o in sorted(outs))))
        elif outs and len(rs) > 1:
            notes.append("records out at %s events: %s in every run" % (num(events), num(outs.pop())))
    print("Checks:\n")
    for n in notes:
        print("- " + n)
    print()


# ---------------------------------------------------------------- worker cluster

def cluster_section(recs, e2e):
    print("## Worker cluster\n")
    recs = [r for r in recs if r.get("kind") == "cluster"]
    if not recs:
        print("not run (no cluster.jsonl)\n")
        return
    groups = {}
    for r in recs:
        groups.setdefault((bool(r.get("repartition")), r.get("workers"), r.get("events")), []).append(r)
    keys = sorted(groups, key=lambda k: (k[0], k[1] or 0, -(k[2] or 0)))
    cluster_events = sorted({k[2] for k in keys if k[2]})

    # weir run's reference: the `weir` variant of e2e.jsonl at the cluster's
    # event count if there is one, else its largest.
    weir_groups = {}
    for r in e2e:
        if r.get("kind") == "weir":
            weir_groups.setdefault(r.get("events"), []).append(r)
    ref_events = None
    if weir_groups:
        same = [e for e in cluster_events if e in weir_groups]
        ref_events = same[0] if same else max(weir_groups, key=lambda e: e or 0)
    ref = weir_groups.get(ref_events, [])

    parts = values_text(recs, "partitions")
    print("`bench/cluster_bench.py`: the events in a %s-partition topic on a fresh tansu broker, "
          "`bench/sql/windows.sql` (bounded) submitted to N `weir worker` processes on this machine; wall time "
          "from the submit until every task reports `finished`, CPU-s the workers' together per million input "
          "events, peak RSS the largest worker's. Repartitioned: the source without `'key.fields'`, read through "
          "a repartition topic (a map and a window task per partition). The `weir run` row is the `weir` variant "
          "of the end-to-end table. Median (min-max) over the runs.\n" % parts)
    print("| | events | runs | wall s | events/s | CPU-s per 1M events | ÷ `weir run` CPU | peak RSS MiB per worker "
          "| broker CPU-s |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    if ref:
        col = lambda f: spread([r.get(f) for r in ref])  # noqa: E731
        print("| `weir run` (one process, one source task reading every partition) | %s | %d | %s | %s | %s | "
              "(reference) | %s | %s |" % (num(ref_events), len(ref), col("wall_s"), col("events_per_s"),
                                          col("cpu_s_per_million_events"), col("peak_rss_mib"),
                                          col("broker_cpu_s")))
    for rep_, workers, events in keys:
        rs = groups[(rep_, workers, events)]
        p = rs[0].get("partitions")
        who = "cluster, %s worker%s" % (num(workers), "" if workers == 1 else "s")
        if rep_:
            who += ", repartitioned (%s map + %s window tasks)" % (num(p), num(p)) if p else ", repartitioned"
        elif p:
            who += " (%s tasks%s)" % (num(p), "" if workers == 1 else " in all")
        col = lambda f: spread([r.get(f) for r in rs])  # noqa: E731
        rat = ratio_text(ratios(rs, ref, paired=False)[0]) if ref else "-"
        print("| %s | %s | %d | %s | %s | %s | %s | %s | %s |" % (
            who, num(events), len(rs), col("wall_s"), col("events_per_s"), col("cpu_s_per_million_events"), rat,
            col("peak_rss_mib_per_worker"), col("broker_cpu_s")))
    print()
    if ref:
        ce = ", ".join(num(e) for e in cluster_events)
        if cluster_events == [ref_events]:
            same = "both at %s events" % ce
        else:
            same = ("`weir run` at %s events (BENCH_EVENTS), the cluster at %s (BENCH_PEER_EVENTS): per-million "
                    "figures, but the fixed costs (start-up, model load, the last windows) weigh more in the "
                    "smaller run; `BENCH_EVENTS=%s` makes the counts equal" % (num(ref_events), ce,
                                                                                  cluster_events[0]))
        print("÷ `weir run` CPU: the row's CPU-s per 1M events over the `weir` variant's in e2e.jsonl, over all "
              "pairs of runs (the two were run at different times of the session); %s.\n" % same)
    else:
        print("No `weir` variant in e2e.jsonl (the e2e step skipped, or `weir` not in BENCH_VARIANTS): no ratio "
              "against `weir run`.\n")


def cheaper(vals, what):
    """'weir is Nx cheaper in CPU per event than WHAT' from peer/weir ratios,
    or the inverse wording when weir is the dearer one."""
    vals = [v for v in vals if v]
    if vals and statistics.median(vals) < 1:
        return "weir uses %s the CPU per event of %s" % (ratio_text([1 / v for v in vals]), what)
    return "weir is %s cheaper in CPU per event than %s" % (ratio_text(vals), what)


def runs(n):
    return "1 run" if n == 1 else "%d runs" % n


def events_note(a, b):
    if a == b:
        return ""
    return "; weir at %s events, this at %s: per-million figures" % (num(a), num(b))


def checks_e2e(groups):
    notes = []
    outs = {}
    for (kind, mode, cc, events), rs in groups:
        if kind in ("weir", "weir-no-predict", "weir-file"):
            late = sum(r.get("late") or 0 for r in rs)
            dead = sum(r.get("dead_lettered") or 0 for r in rs)
            notes.append("%s, %s events: %s late, %s dead-lettered over %s" % (
                kind, num(events), num(late), num(dead), runs(len(rs))))
        if kind == "python":
            bad = sum(r.get("bad") or 0 for r in rs)
            late = sum(r.get("late_event_windows") or 0 for r in rs)
            notes.append("%s, %s events: %s bad records, %s late-event windows over %s" % (
                label(kind, mode, cc), num(events), num(bad), num(late), runs(len(rs))))
        if kind in ("weir", "weir-no-predict", "weir-file", "python", "flink-full", "flink-small"):
            for r in rs:
                o = metrics(r)["out"]
                if o is not None:
                    outs.setdefault(events, {}).setdefault(o, set()).add(kind + (" " + mode if mode else ""))
    for events, vals in sorted(outs.items()):
        if len(vals) == 1:
            (o, who), = vals.items()
            notes.append("records out at %s events: %s, the same in every run of %s" % (
                num(events), num(o), ", ".join(sorted(who))))
        else:
            notes.append("records out at %s events **differ**: %s" % (num(events), "; ".join(
                "%s: %s" % (num(o), ", ".join(sorted(w))) for o, w in sorted(vals.items()))))
    if notes:
        print("Checks:\n")
        for n in notes:
            print("- " + n)
        print()


# ---------------------------------------------------------------- criterion

def load_criterion(res):
    """full_id -> {group, function, value, elements, ns, lo, hi} from criterion/**/new/."""
    out = {}
    for bj in glob.glob(os.path.join(res, "criterion", "**", "new", "benchmark.json"), recursive=True):
        ej = os.path.join(os.path.dirname(bj), "estimates.json")
        if not os.path.exists(ej):
            continue
        b = json.load(open(bj))
        e = json.load(open(ej))["median"]
        tp = b.get("throughput") or {}
        out[b["full_id"]] = dict(group=b.get("group_id"), function=b.get("function_id"), value=b.get("value_str"),
                                 elements=tp.get("Elements"), ns=e["point_estimate"],
                                 lo=e["confidence_interval"]["lower_bound"],
                                 hi=e["confidence_interval"]["upper_bound"])
    return out


def rows_per_s(c):
    """(median, low, high) rows/s; the slow end of the time CI is the low end of rows/s."""
    if not c.get("elements"):
        return None
    n = c["elements"] * 1e9
    return n / c["ns"], n / c["hi"], n / c["lo"]


def ci_text(t):
    return "%s [%s-%s]" % (num(t[0]), num(t[1]), num(t[2]))


def scoring_section(crit, ort):
    print("## Scoring: weir's predict against onnxruntime\n")
    summ = {(r["model"], r["batch"]): r for r in ort if r.get("kind") == "summary"}
    weir = {(c["function"], int(c["value"])): c for c in crit.values() if c["group"] == "score"}
    if not summ and not weir:
        print("not run (no criterion score/ results, no ort.jsonl)\n")
        return
    setup = next((r for r in ort if r.get("kind") == "setup"), None)
    weir_txt = ("weir: criterion's median time per `score_columns` call (operators/benches/operators.rs) as "
                "rows/s [95 % CI]" if weir else "weir: not run")
    ort_txt = "onnxruntime: not run"
    if summ:
        ort_txt = ("onnxruntime: `ort_bench.py`, `sess.run` from Python, median (min-max) of its %s repeats"
                   % (setup.get("repeats") if setup else "timed"))
        if setup and setup.get("loadavg"):
            ort_txt += " (onnxruntime %s, load average %.2f at its start)" % (setup.get("onnxruntime"),
                                                                            setup["loadavg"][0])
        if weir:
            ort_txt += ", run right after criterion"
    print("rows/s on the 4096 fixed rows of bench/scoring (models/rows.f32), one thread each. %s. %s.\n"
          % (weir_txt, ort_txt))
    models = [m for m in SCORE_MODELS if any(k[0] == m for k in list(weir) + list(summ))]
    models += sorted({k[0] for k in list(weir) + list(summ)} - set(models) - {"identity"})
    batches = sorted({k[1] for k in list(weir) + list(summ)})
    print("| model | batch | weir rows/s | onnxruntime rows/s | weir ÷ onnxruntime |")
    print("| --- | --- | --- | --- | --- |")
    for m in models:
        for b in batches:
            w, o = weir.get((m, b)), summ.get((m, b))
            if not w and not o:
                continue
            wr = rows_per_s(w) if w else None
            cells = [ci_text(wr) if wr else "-",
                     "%s (%s-%s)" % (num(o["rows_per_s_median"]), num(o["rows_per_s_min"]), num(o["rows_per_s_max"]))
                     if o else "-",
                     "**%.2fx**" % (wr[0] / o["rows_per_s_median"]) if wr and o else "-"]
            print("| %s | %s | %s |" % (m, num(b), " | ".join(cells)))
    print()
    ident = summ.get(("identity", 1))
    if ident:
        print("onnxruntime's per-call cost from Python (a one-node Identity graph, batch 1): %s rows/s, %s µs per "
              "call; weir calls tract from Rust and pays no such binding cost.\n"
              % (num(ident["rows_per_s_median"]), num(ident["us_per_call_median"])))


def operators_section(crit):
    print("## Operators\n")
    ops = [c for k, c in sorted(crit.items()) if c["group"] != "score"]
    if not ops:
        print("not run (no criterion results outside score/)\n")
        return
    print("criterion (operators/benches/operators.rs): median time per iteration [95 % CI] and the rows/s it "
          "makes. `json`: 8192 transactions per iteration; `window_hop/cards/N`: HOP(1 min, 10 min) with the "
          "fraud example's five aggregates over N distinct cards, 8192 rows per iteration, windows firing as "
          "the watermark moves.\n")
    print("| benchmark | rows per iteration | time per iteration | rows/s |")
    print("| --- | --- | --- | --- |")
    for c in ops:
        rps = rows_per_s(c)
        print("| %s/%s%s | %s | %s [%s-%s] | %s |" % (
            c["group"], c["function"], "/" + c["value"] if c.get("value") else "",
            num(c["elements"]) if c.get("elements") else "-",
            duration_ns(c["ns"]), duration_ns(c["lo"]), duration_ns(c["hi"]),
            ci_text(rps) if rps else "-"))
    print()


def commands_section(res):
    print("## Commands\n")
    path = os.path.join(res, "commands.txt")
    if not os.path.exists(path):
        print("not recorded (no commands.txt)\n")
        return
    print("As run by `make bench` (scripts/bench.sh), in order:\n")
    print("```sh")
    print(open(path).read().rstrip())
    print("```\n")


def main(argv):
    if len(argv) != 2 or argv[1] in ("-h", "--help"):
        sys.stderr.write(__doc__)
        return 2
    res = argv[1]
    if not os.path.isdir(res):
        sys.stderr.write("not a directory: %s\n" % res)
        return 2
    e2e = load_jsonl(os.path.join(res, "e2e.jsonl"))
    crit = load_criterion(res)
    ort = load_jsonl(os.path.join(res, "ort.jsonl"))
    lat = load_jsonl(os.path.join(res, "latency.jsonl"))
    state = load_jsonl(os.path.join(res, "state.jsonl"))
    cluster = load_jsonl(os.path.join(res, "cluster.jsonl"))
    print("# weir benchmarks\n")
    print("Generated by `bench/report.py %s`.\n" % os.path.normpath(res))
    machine_section(res, [("end-to-end", e2e), ("latency", lat), ("state-size", state)])
    e2e_section(e2e)
    flink_file_section(e2e, res)
    latency_section(lat)
    state_section(state)
    cluster_section(cluster, e2e)
    scoring_section(crit, ort)
    operators_section(crit)
    commands_section(res)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))

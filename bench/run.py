#!/usr/bin/env python3
"""Runs the peers repeatedly and summarises them (medians, min-max).

    # Python baseline: per run a fresh tansu broker, the events produced to a
    # topic with P partitions, an empty output topic, then python_baseline.py
    python3 bench/run.py python --events-file /tmp/events-1m.jsonl --partitions 4 \\
        --modes micro-batch,per-message --repeat 3 --log bench-results.jsonl

    # Flink (its own venv, see README): the job on the file, and on its first
    # 1000 lines to show the fixed per-job cost
    python3 bench/run.py flink --events-file /tmp/events-1m.jsonl --repeat 3 \\
        --flink-python ~/.venvs/flink/bin/python --log bench-results.jsonl

    python3 bench/run.py summary bench-results.jsonl

Each run appends one JSON object to --log (the script's own report plus the
run's context: load average before and after, and for the Python baseline the
broker's CPU during the run, which is not in the baseline's figures).
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)


def loadavg():
    with open("/proc/loadavg") as fh:
        return float(fh.read().split()[0])


def run_json(cmd, **kw):
    p = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, **kw)
    if p.returncode != 0:
        raise SystemExit("failed (%d): %s" % (p.returncode, " ".join(cmd)))
    return json.loads(p.stdout.strip().splitlines()[-1])


def append(log, rec):
    print(json.dumps(rec), flush=True)
    if log:
        with open(log, "a") as fh:
            fh.write(json.dumps(rec) + "\n")


def python_runs(a):
    from data import create_topic
    from tansu import Tansu

    for i in range(a.repeat):
        for mode in a.modes.split(","):
            with Tansu() as broker:
                produced = run_json([sys.executable, os.path.join(HERE, "data.py"), "--from-jsonl", a.events_file,
                                     "--brokers", broker.brokers, "--topic", "transactions",
                                     "--partitions", str(a.partitions)])
                create_topic(broker.brokers, "card-scores", a.partitions)
                time.sleep(0.5)
                la0, b0 = loadavg(), broker.cpu_seconds()
                rep = run_json([sys.executable, os.path.join(HERE, "python_baseline.py"), "--brokers", broker.brokers,
                                "--input", "transactions", "--output", "card-scores", "--mode", mode,
                                "--batch", str(a.batch)] +
                               [arg for kv in a.consumer_config for arg in ("--consumer-config", kv)])
                rep.update(kind="python", run=i, events_file=a.events_file, partitions=a.partitions,
                           input_value_bytes=produced["value_bytes"],
                           broker_cpu_s=round(broker.cpu_seconds() - b0, 3),
                           broker_peak_rss_mib=round(broker.peak_rss_mib(), 1),
                           loadavg_before=la0, loadavg_after=loadavg())
                append(a.log, rep)


def flink_runs(a):
    tmp = tempfile.mkdtemp(prefix="weir-bench-flink-")
    small = os.path.join(tmp, "events-small.jsonl")
    with open(a.events_file) as src, open(small, "w") as dst:
        for i, line in enumerate(src):
            if i >= a.small_events:
                break
            dst.write(line)
    out = os.path.join(tmp, "out")
    for i in range(a.repeat):
        for label, path in (("small", small), ("full", a.events_file)):
            if label == "small" and a.small_events <= 0:
                continue
            la0 = loadavg()
            cmd = [a.flink_python, os.path.join(HERE, "flink_hop.py"), "--events", path, "--out", out,
                   "--state-backend", a.state_backend]
            for kv in a.set:
                cmd += ["--set", kv]
            rep = run_json(cmd, stderr=subprocess.DEVNULL)
            rep.update(kind="flink-" + label, run=i, events_file=path, loadavg_before=la0, loadavg_after=loadavg())
            if label == "full" and a.keep_output:
                os.makedirs(a.keep_output, exist_ok=True)
                for root, _d, names in os.walk(out):
                    for n in names:
                        if not n.startswith("."):
                            os.replace(os.path.join(root, n), os.path.join(a.keep_output, "run%d-%s" % (i, n)))
            append(a.log, rep)


def spread(vals):
    vals = [v for v in vals if v is not None]
    if not vals:
        return "-"
    med = statistics.median(vals)
    return "%s (%s-%s)" % (fmt(med), fmt(min(vals)), fmt(max(vals)))


def fmt(v):
    if isinstance(v, float) and abs(v) < 100:
        return "%.2f" % v
    return "{:,}".format(round(v))


def summary(a):
    recs = [json.loads(l) for l in open(a.log_file) if l.strip()]
    groups = {}
    for r in recs:
        key = (r["kind"], (r.get("mode") or r.get("state_backend") or "") +
               (" " + " ".join(r["consumer_config"]) if r.get("consumer_config") else ""), r.get("events"))
        groups.setdefault(key, []).append(r)
    for (kind, variant, events), rs in sorted(groups.items(), key=lambda kv: str(kv[0])):
        print("## %s %s, %s events, %d runs" % (kind, variant, "{:,}".format(events), len(rs)))
        fields = (["events_per_s", "wall_s", "cpu_s", "cpu_s_per_million_events", "peak_rss_mib", "predictions",
                   "broker_cpu_s", "loadavg_before"] if kind == "python" else
                  ["events_per_s", "wall_s", "cpu_s", "cpu_s_per_million_events", "peak_rss_mib", "records_out",
                   "late", "broker_cpu_s", "loadavg_before"] if kind.startswith("weir") or kind == "bare" else
                  ["events_per_s", "events_per_s_processing", "job_wall_s", "processing_wall_s", "setup_wall_s",
                   "final_checkpoint_wait_s", "job_cpu_s", "cpu_s_per_million_events", "jvm_start_s",
                   "total_wall_s", "total_cpu_s", "java_peak_rss_mib", "windows", "loadavg_before"])
        for f in fields:
            print("  %-28s %s" % (f, spread([r.get(f) for r in rs])))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("python")
    p.add_argument("--events-file", required=True)
    p.add_argument("--partitions", type=int, default=4)
    p.add_argument("--modes", default="micro-batch,per-message")
    p.add_argument("--batch", type=int, default=1000)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--consumer-config", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--log")
    f = sub.add_parser("flink")
    f.add_argument("--events-file", required=True)
    f.add_argument("--flink-python", default=os.path.expanduser("~/.venvs/flink/bin/python"))
    f.add_argument("--state-backend", default="hashmap")
    f.add_argument("--set", action="append", default=[])
    f.add_argument("--small-events", type=int, default=1000)
    f.add_argument("--keep-output", help="move the full runs' output files here")
    f.add_argument("--repeat", type=int, default=3)
    f.add_argument("--log")
    s = sub.add_parser("summary")
    s.add_argument("log_file")
    a = ap.parse_args(argv)
    {"python": python_runs, "flink": flink_runs, "summary": summary}[a.cmd](a)


if __name__ == "__main__":
    main()

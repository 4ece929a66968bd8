#!/usr/bin/env python3
"""weir as a worker cluster, against `weir run` (issue 4: measured single-worker figures).

Per run: a fresh tansu broker, the events produced to a topic of P partitions,
N `weir worker` processes, and `weir submit bench/sql/windows.sql` (the fraud
HOP features + predict, bounded). Each partition runs as a task that stops at
its partition's end; the run ends when every task reports `finished` in its
worker's /api/jobs. Wall time is from the submit to then; CPU is the workers'
(user + sys, from /proc, all threads) over the same span, so CPU-s per
million events compares with bench/weir_bench.py's `weir` variant.

    cargo build --release --bin weir
    python3 bench/cluster_bench.py --events-file /tmp/events-1m.jsonl --partitions 4 \\
        --workers 1,2 --repeat 1
"""

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def api_jobs(port):
    try:
        with urllib.request.urlopen("http://127.0.0.1:%d/api/jobs" % port, timeout=2) as r:
            return json.load(r)
    except Exception:
        return None


def run_once(a, workers, i):
    from tansu import Tansu, proc_cpu_seconds, proc_peak_rss_mib
    from weir_bench import load_events, target_dir

    weir = os.environ.get("WEIR_BENCH_BIN") or os.path.join(target_dir(), "release", "weir")
    with Tansu() as broker, tempfile.TemporaryDirectory(prefix="weir-cluster-bench-") as tmp:
        produced = load_events(a, broker)
        env = dict(os.environ, KAFKA_BROKERS=broker.brokers, WEIR_LOG=os.environ.get("WEIR_LOG", "warn"))
        procs = []
        cleanup = []
        try:
            for w in range(workers):
                port = free_port()
                log = open(os.path.join(tmp, "w%d.log" % w), "w")
                p = subprocess.Popen(
                    [weir, "worker", "--brokers", broker.brokers, "--id", "w%d" % w,
                     "--http", "127.0.0.1:%d" % port, "--state-dir", os.path.join(tmp, "w%d" % w)],
                    stdout=subprocess.DEVNULL, stderr=log, env=env)
                procs.append((p, port))
            # Workers up (HTTP answering) before the clock starts.
            deadline = time.monotonic() + 60
            while any(api_jobs(port) is None for _, port in procs):
                if time.monotonic() > deadline:
                    raise SystemExit("workers did not start")
                time.sleep(0.1)
            cpu0 = sum(proc_cpu_seconds(p.pid) for p, _ in procs)
            b0 = broker.cpu_seconds()
            t0 = time.monotonic()
            sql = os.path.join(HERE, "sql", "windows.sql")
            if a.repartition:
                # Without the source's key declared, state keyed by card goes
                # through a repartition topic (map + window task per partition).
                text = open(sql).read()
                key_line = "  'key.fields' = 'card_id',\n"
                assert text.count(key_line) == 1, "windows.sql declares the source's key once"
                # Beside the original: submit ships the model by its path
                # relative to the SQL file.
                with tempfile.NamedTemporaryFile("w", dir=os.path.dirname(sql), prefix=".repartition-",
                                                 suffix=".sql", delete=False) as f:
                    f.write(text.replace(key_line, ""))
                sql = f.name
                cleanup.append(sql)
            expected_tasks = a.partitions * (2 if a.repartition else 1)
            subprocess.run([weir, "submit", sql, "--name", "bench", "--brokers", broker.brokers],
                           check=True, env=env)
            while True:
                statuses = [api_jobs(port) for _, port in procs]
                tasks = [t for s in statuses if s for j in s["jobs"] for t in j["tasks"]]
                done = [t for t in tasks if t["state"] == "finished"]
                failed = [t for t in tasks if t["state"] == "failed"]
                if failed:
                    raise SystemExit("a task failed: %s" % failed[0].get("error"))
                if len(done) == expected_tasks:
                    break
                if time.monotonic() - t0 > a.timeout:
                    raise SystemExit("not finished after %ds: %s" % (a.timeout, tasks))
                time.sleep(0.2)
            wall = time.monotonic() - t0
            cpu = sum(proc_cpu_seconds(p.pid) for p, _ in procs) - cpu0
            rss = max(proc_peak_rss_mib(p.pid) for p, _ in procs)
            # Tasks count what they read since they started on their worker;
            # the input is what was produced.
            events = produced["events"]
            rec = dict(kind="cluster", workers=workers, run=i, events_file=a.events_file,
                       repartition=a.repartition,
                       partitions=a.partitions, input_value_bytes=produced["value_bytes"],
                       events=events, wall_s=round(wall, 3), cpu_s=round(cpu, 3),
                       events_per_s=round(events / wall),
                       cpu_s_per_million_events=round(cpu / max(events, 1) * 1e6, 3),
                       peak_rss_mib_per_worker=round(rss, 1),
                       broker_cpu_s=round(broker.cpu_seconds() - b0, 3))
            return rec
        finally:
            for p, _ in procs:
                p.kill()
                p.wait()
            for path in cleanup:
                os.unlink(path)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--events-file", required=True)
    ap.add_argument("--partitions", type=int, default=4)
    ap.add_argument("--repartition", action="store_true",
                    help="drop the source's 'key.fields': the job reads through a repartition topic")
    ap.add_argument("--workers", default="1,2")
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--timeout", type=int, default=900)
    ap.add_argument("--log")
    a = ap.parse_args(argv)
    for i in range(a.repeat):
        for n in map(int, a.workers.split(",")):
            rec = run_once(a, n, i)
            print(json.dumps(rec), flush=True)
            if a.log:
                with open(a.log, "a") as fh:
                    fh.write(json.dumps(rec) + "\n")


if __name__ == "__main__":
    main()

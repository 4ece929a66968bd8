#!/usr/bin/env python3
"""weir end to end on the broker, and the limit beside it (issue 6, item 1).

Per run: a fresh tansu broker, the events produced to a topic of P partitions,
then one of

  weir             target/release/weir run bench/sql/windows.sql (HOP features
                   + predict + JSON sink, bounded: stops at the topic's end)
  weir-no-predict  the same without predict (bench/sql/windows-no-predict.sql)
  bare             target/release/examples/bare_consumer: librdkafka reading
                   the topic to its end, nothing else (the limit)
  bare-producer    target/release/examples/bare_producer: librdkafka producing
                   --producer-records records like the pipeline's output
                   (weir's producer settings, a delivery callback each), the
                   output side's limit (nothing is produced to 'transactions')
  weir-file        bench/sql/windows-file.sql: Flink's job (flink_hop.py: the
                   HOP features, no predict) reading the events *file* with
                   weir's filesystem source, writing to the topic card-features
                   (nothing is produced to 'transactions'); --keep-output
                   FILE saves what it wrote as JSON lines, for
                   compare_windows.py

CPU (user + sys) and peak RSS come from the process's own rusage (wait4), so
CPU-s per million events is per core. The broker's CPU during the run is
reported beside it, not included.

    cargo build --release --bin weir --example bare_consumer
    python3 bench/weir_bench.py --events-file /tmp/events-1m.jsonl --partitions 4 \\
        --variants weir,weir-no-predict,bare --repeat 3 --log bench-results.jsonl

Each run appends one JSON object to --log; `bench/run.py summary` summarises.
"""

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)


def target_dir():
    return os.environ.get("CARGO_TARGET_DIR") or os.path.join(ROOT, "target")


def loadavg():
    with open("/proc/loadavg") as fh:
        return float(fh.read().split()[0])


def timed(cmd, env=None, cwd=None):
    """Runs cmd; returns (stdout, stderr, wall s, cpu s, peak rss MiB) from wait4."""
    out = tempfile.TemporaryFile()
    err = tempfile.TemporaryFile()
    t0 = time.monotonic()
    p = subprocess.Popen(cmd, stdout=out, stderr=err, env=env, cwd=cwd)
    _, status, ru = os.wait4(p.pid, 0)
    wall = time.monotonic() - t0
    p.returncode = os.waitstatus_to_exitcode(status)
    out.seek(0)
    err.seek(0)
    stdout, stderr = out.read().decode(), err.read().decode()
    if p.returncode != 0:
        sys.stderr.write(stderr[-4000:])
        raise SystemExit("failed (%d): %s" % (p.returncode, " ".join(cmd)))
    return stdout, stderr, wall, ru.ru_utime + ru.ru_stime, ru.ru_maxrss / 1024.0


def load_events(a, broker):
    """Produces --events-file to 'transactions' (--partitions), creates the
    output topics; returns data.py's report (events, value_bytes, ...)."""
    from data import create_topic

    produced = json.loads(subprocess.run(
        [sys.executable, os.path.join(HERE, "data.py"), "--from-jsonl", a.events_file,
         "--brokers", broker.brokers, "--topic", "transactions", "--partitions", str(a.partitions)],
        check=True, stdout=subprocess.PIPE, text=True).stdout.strip().splitlines()[-1])
    for t in ("card-scores", "transactions-dlq"):
        create_topic(broker.brokers, t, a.partitions)
    return produced


def run_once(a, variant, i):
    from tansu import Tansu

    tdir = target_dir()
    # WEIR_BENCH_BIN: another weir binary (e.g. an earlier build to compare with).
    weir = os.environ.get("WEIR_BENCH_BIN") or os.path.join(tdir, "release", "weir")
    bare = os.path.join(tdir, "release", "examples", "bare_consumer")
    bare_producer = os.path.join(tdir, "release", "examples", "bare_producer")
    with Tansu() as broker:
        if variant in ("weir-file", "bare-producer"):
            from data import create_topic

            create_topic(broker.brokers, "card-features" if variant == "weir-file" else "card-scores", a.partitions)
            produced = dict(value_bytes=os.path.getsize(a.events_file))
        else:
            produced = load_events(a, broker)
        time.sleep(0.5)
        la0, b0 = loadavg(), broker.cpu_seconds()
        rec = dict(kind=variant, run=i, events_file=a.events_file, partitions=a.partitions,
                   input_value_bytes=produced["value_bytes"])
        if variant == "bare":
            stdout, _, wall, cpu, rss = timed([bare, broker.brokers, "transactions"])
            rep = json.loads(stdout.strip().splitlines()[-1])
            events = rep["messages"]
            rec.update(messages=events, bytes=rep["bytes"])
        elif variant == "bare-producer":
            # WEIR_BENCH_PRODUCER_ARGS: librdkafka settings (key=value) or no-headers.
            extra = os.environ.get("WEIR_BENCH_PRODUCER_ARGS", "").split()
            wrap = os.environ.get("WEIR_BENCH_WRAP", "").split()
            stdout, _, wall, cpu, rss = timed(
                wrap + [bare_producer, broker.brokers, "card-scores", str(a.producer_records)] + extra)
            rec.update(producer_args=extra)
            rep = json.loads(stdout.strip().splitlines()[-1])
            events = rep["records"]
            rec.update(records_out=events, bytes=rep["bytes"], cpu_s_per_million_records=round(cpu / events * 1e6, 3))
        else:
            sql = os.path.join(HERE, "sql", {"weir": "windows.sql", "weir-no-predict": "windows-no-predict.sql",
                                             "weir-file": "windows-file.sql"}[variant])
            # WEIR_BENCH_SQL runs another pipeline in the weir variant's place
            # (an experiment's settings: the same source and sink tables).
            if variant == "weir" and os.environ.get("WEIR_BENCH_SQL"):
                sql = os.path.abspath(os.environ["WEIR_BENCH_SQL"])
            env = dict(os.environ, KAFKA_BROKERS=broker.brokers, WEIR_LOG=os.environ.get("WEIR_LOG", "warn"),
                       WEIR_BENCH_EVENTS=os.path.abspath(a.events_file))
            with tempfile.TemporaryDirectory(prefix="weir-bench-state-") as state:
                # WEIR_BENCH_WRAP prefixes the command, e.g. with a profiler:
                # WEIR_BENCH_WRAP="perf record -F 99 -g -o /tmp/weir.perf --".
                wrap = os.environ.get("WEIR_BENCH_WRAP", "").split()
                _, stderr, wall, cpu, rss = timed(
                    wrap + [weir, "run", sql, "--state-dir", state, "--group-id", "bench-%d" % i], env=env)
            m = re.search(r"done: (\d+) records in, (\d+) out, (\d+) dead-lettered, (\d+) late", stderr)
            if not m:
                sys.stderr.write(stderr[-4000:])
                raise SystemExit("weir printed no summary")
            events, out, dead, late = map(int, m.groups())
            rec.update(records_out=out, dead_lettered=dead, late=late)
            if variant == "weir-file" and a.keep_output:
                rec.update(kept=dump_topic(broker.brokers, "card-features", a.keep_output))
        rec.update(events=events, wall_s=round(wall, 3), cpu_s=round(cpu, 3),
                   events_per_s=round(events / wall), cpu_s_per_million_events=round(cpu / events * 1e6, 3),
                   events_per_cpu_s=round(events / cpu), peak_rss_mib=round(rss, 1),
                   broker_cpu_s=round(broker.cpu_seconds() - b0, 3),
                   loadavg_before=la0, loadavg_after=loadavg())
        return rec


def dump_topic(brokers, topic, path):
    """Writes every record value of `topic` to `path`, one per line; returns
    the count."""
    from confluent_kafka import Consumer, KafkaError, TopicPartition

    c = Consumer({"bootstrap.servers": brokers, "group.id": "bench-dump", "enable.auto.commit": False,
                  "enable.partition.eof": True, "fetch.wait.max.ms": 10})
    parts = c.list_topics(topic, timeout=10).topics[topic].partitions
    c.assign([TopicPartition(topic, p, 0) for p in parts])
    ended, n = set(), 0
    with open(path, "wb") as fh:
        while len(ended) < len(parts):
            for m in c.consume(10000, timeout=1.0):
                if m.error():
                    if m.error().code() == KafkaError._PARTITION_EOF:
                        ended.add(m.partition())
                        continue
                    raise SystemExit("reading %s: %s" % (topic, m.error()))
                fh.write(m.value() + b"\n")
                n += 1
    c.close()
    return n


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--events-file", required=True)
    ap.add_argument("--partitions", type=int, default=4)
    ap.add_argument("--variants", default="weir,weir-no-predict,bare")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--log")
    ap.add_argument("--keep-output", help="weir-file: save its output here (JSON lines)")
    ap.add_argument("--producer-records", type=int, default=4942951,
                    help="bare-producer: records to produce (default: what the pipeline writes for 1M events)")
    a = ap.parse_args(argv)
    for i in range(a.repeat):
        for v in a.variants.split(","):
            rec = run_once(a, v, i)
            print(json.dumps(rec), flush=True)
            if a.log:
                with open(a.log, "a") as fh:
                    fh.write(json.dumps(rec) + "\n")


if __name__ == "__main__":
    main()

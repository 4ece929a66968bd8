#!/usr/bin/env python3
"""Stream-processor peer: windows.sql's HOP aggregation in Apache Flink (PyFlink).

    ~/.venvs/flink/bin/python bench/flink_hop.py --events events.jsonl --out /tmp/flink-out

Streaming mode, local mini-cluster inside the JVM that PyFlink starts,
parallelism 1, source = the filesystem connector reading the JSONL file
(format json, ts TIMESTAMP_LTZ(3), WATERMARK ts - 5 s: Flink's ISO-8601
TIMESTAMP(3) parser rejects the generator's trailing 'Z', its TIMESTAMP_LTZ
parser takes it; the session time zone is UTC, so the windows are the same
epoch-aligned ones), the same HOP(1 min,
10 min) GROUP BY card_id as examples/fraud/windows.sql's card_features view
(no predict: Flink has no ONNX), sink = the filesystem connector writing JSONL
rows {card_id, window_start, window_end, n, avg_amount, max_amount,
sd_amount, n_merchants} into the --out directory (part files; read them with
compare_windows.py). Checkpoints every 10 s like windows.sql
('checkpoint.interval'), to local files; no restarts (a failure fails the run).

apache-flink pins numpy/protobuf versions that break onnx, so it lives in its
own venv (bench/README.md).

What is measured (printed as one JSON object):
  jvm_start_s       wall time to create the TableEnvironment (launches the JVM)
  job_wall_s        wall time from submitting the INSERT to its end: planning,
                    mini-cluster start, reading, windows, writing, final commit
  job_cpu_s         CPU (user + sys, all threads) of the java process over the
                    job, from /proc/<pid>/stat before submit and after the end
  total_wall_s      wall time of this script (imports, JVM start, job)
  total_cpu_s       java process CPU from its start to the end of the job plus
                    this python process's own (getrusage RUSAGE_SELF)
  java_peak_rss_mib VmHWM of the java process at the end
  processing_wall_s from the job's RUNNING state to the file sink's end of
                    input (all windows fired and written), from the Flink log;
                    excludes JVM start, planning, mini-cluster start and the
                    wait for the final checkpoint (final_checkpoint_wait_s: the
                    job finishes at the next periodic checkpoint, up to 10 s)
  setup_wall_s      the rest of job_wall_s: planning, code generation, mini-cluster
                    start, job submission (before the job is RUNNING)
  events_per_s_processing  events / processing_wall_s
The fixed per-job cost is also measured by running a tiny input (bench/run.py).
"""

import argparse
import json
import os
import resource
import shutil
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from tansu import proc_cpu_seconds, proc_peak_rss_mib  # noqa: E402  (no Kafka needed)

T_START = time.monotonic()

HOP_SQL = """
INSERT INTO card_features
SELECT card_id, window_start, window_end,
       count(*)                 AS n,
       avg(amount)              AS avg_amount,
       max(amount)              AS max_amount,
       stddev_pop(amount)       AS sd_amount,
       count(DISTINCT merchant) AS n_merchants
FROM TABLE(HOP(TABLE transactions, DESCRIPTOR(ts), INTERVAL '1' MINUTE, INTERVAL '10' MINUTE))
GROUP BY card_id, window_start, window_end
"""


def java_child():
    import psutil

    me = psutil.Process()
    javas = [p for p in me.children(recursive=True) if p.name() == "java"]
    if len(javas) != 1:
        raise SystemExit("expected one java child, found %r" % javas)
    return javas[0].pid


def log_phases(job_id):
    """Splits the job's wall time using the mini-cluster's log (pyflink/log/*.log):
    job RUNNING -> the file sink's end of input (every window fired and written:
    it logs 'checkpointing for checkpoint with id=9223372036854775807') -> job
    FINISHED (which waits for the next periodic checkpoint to commit)."""
    import glob
    from datetime import datetime

    import pyflink

    logs = sorted(glob.glob(os.path.join(os.path.dirname(pyflink.__file__), "log", "*.log")),
                  key=os.path.getmtime)
    if not logs:
        return {}
    t_running = t_end_input = t_finished = None

    def stamp(line):
        return datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f").timestamp()

    with open(logs[-1], errors="replace") as fh:
        for line in fh:
            if t_running is None:
                if job_id in line and "switched from state CREATED to RUNNING" in line and "Job " in line:
                    t_running = stamp(line)
            elif t_end_input is None:
                if "checkpointing for checkpoint with id=9223372036854775807" in line:
                    t_end_input = stamp(line)
            elif job_id in line and "switched from state RUNNING to FINISHED" in line and "Job " in line:
                t_finished = stamp(line)
                break
    out = {}
    if t_running and t_end_input:
        out["processing_wall_s"] = round(t_end_input - t_running, 3)
    if t_end_input and t_finished:
        out["final_checkpoint_wait_s"] = round(t_finished - t_end_input, 3)
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--events", required=True, help="JSONL events file")
    ap.add_argument("--out", required=True, help="output directory (replaced)")
    ap.add_argument("--work", default=None, help="checkpoint directory (default OUT.checkpoints)")
    ap.add_argument("--state-backend", default="hashmap", choices=["hashmap", "rocksdb"])
    ap.add_argument("--checkpoint-interval", default="10s")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="extra Flink configuration (repeatable)")
    a = ap.parse_args(argv)

    events_path = os.path.abspath(a.events)
    out = os.path.abspath(a.out)
    work = os.path.abspath(a.work or out + ".checkpoints")
    for d in (out, work):
        shutil.rmtree(d, ignore_errors=True)
    os.makedirs(work)

    from pyflink.common import Configuration
    from pyflink.table import EnvironmentSettings, TableEnvironment

    conf = Configuration()
    for k, v in {
        "parallelism.default": "1",
        "table.local-time-zone": "UTC",
        "restart-strategy.type": "none",
        "execution.checkpointing.interval": a.checkpoint_interval,
        "execution.checkpointing.storage": "filesystem",
        "execution.checkpointing.dir": "file://" + work,
        "state.backend.type": a.state_backend,
        "pipeline.name": "fraud-windows-flink",
    }.items():
        conf.set_string(k, v)
    for kv in a.set:
        k, _, v = kv.partition("=")
        conf.set_string(k.strip(), v.strip())
    t0 = time.monotonic()
    settings = EnvironmentSettings.new_instance().in_streaming_mode().with_configuration(conf).build()
    t_env = TableEnvironment.create(settings)
    jvm = java_child()
    t1 = time.monotonic()

    t_env.execute_sql("""
        CREATE TABLE transactions (
          card_id  STRING,
          merchant STRING,
          amount   DOUBLE,
          ts       TIMESTAMP_LTZ(3),
          WATERMARK FOR ts AS ts - INTERVAL '5' SECOND
        ) WITH (
          'connector' = 'filesystem',
          'path' = 'file://%s',
          'format' = 'json',
          'json.timestamp-format.standard' = 'ISO-8601',
          'json.fail-on-missing-field' = 'false',
          'json.ignore-parse-errors' = 'false'
        )""" % events_path)
    t_env.execute_sql("""
        CREATE TABLE card_features (
          card_id      STRING,
          window_start TIMESTAMP(3),
          window_end   TIMESTAMP(3),
          n            BIGINT,
          avg_amount   DOUBLE,
          max_amount   DOUBLE,
          sd_amount    DOUBLE,
          n_merchants  BIGINT
        ) WITH (
          'connector' = 'filesystem',
          'path' = 'file://%s',
          'format' = 'json',
          'json.timestamp-format.standard' = 'ISO-8601',
          'sink.rolling-policy.file-size' = '1gb'
        )""" % out)

    cpu0 = proc_cpu_seconds(jvm)
    t2 = time.monotonic()
    result = t_env.execute_sql(HOP_SQL)
    job_id = str(result.get_job_client().get_job_id())
    result.wait()
    t3 = time.monotonic()
    cpu1 = proc_cpu_seconds(jvm)
    rss = proc_peak_rss_mib(jvm)
    r = resource.getrusage(resource.RUSAGE_SELF)
    py_cpu = r.ru_utime + r.ru_stime

    rows = 0
    files = []
    for root, _dirs, names in os.walk(out):
        for name in names:
            if name.startswith("."):
                continue
            path = os.path.join(root, name)
            files.append(path)
            with open(path, "rb") as fh:
                rows += sum(1 for _ in fh)
    events = 0
    with open(events_path, "rb") as fh:
        events = sum(1 for line in fh if line.strip())

    phases = log_phases(job_id)
    job_wall = t3 - t2
    job_cpu = cpu1 - cpu0
    print(json.dumps({
        "engine": "flink",
        "state_backend": a.state_backend,
        "extra_config": a.set,
        "events": events,
        "windows": rows,
        "output_files": len(files),
        "jvm_start_s": round(t1 - t0, 3),
        "job_wall_s": round(job_wall, 3),
        "job_cpu_s": round(job_cpu, 3),
        "events_per_s": round(events / job_wall) if job_wall > 0 else None,
        "cpu_s_per_million_events": round(job_cpu / events * 1e6, 3) if events else None,
        "job_id": job_id,
        **phases,
        "setup_wall_s": (round(job_wall - phases["processing_wall_s"] - phases["final_checkpoint_wait_s"], 3)
                         if "final_checkpoint_wait_s" in phases and "processing_wall_s" in phases else None),
        "events_per_s_processing": (round(events / phases["processing_wall_s"])
                                    if phases.get("processing_wall_s") else None),
        "total_wall_s": round(t3 - T_START, 3),
        "total_cpu_s": round(cpu1 + py_cpu, 3),
        "java_cpu_before_job_s": round(cpu0, 3),
        "python_cpu_s": round(py_cpu, 3),
        "java_peak_rss_mib": round(rss, 1),
    }))


if __name__ == "__main__":
    main()

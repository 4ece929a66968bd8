#!/usr/bin/env python3
"""Writes the machine and versions a benchmark run used, as JSON (for report.py).

    python3 bench/machine.py > RESULTS/machine.json

Every probe is best effort: a missing tool gives null, never an error, so a
partial environment still gets a report. Run it before the benchmarks (the
load average then says how busy the machine was when they started).
"""

import json
import os
import platform
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def cmd(*args, timeout=10):
    """First line of a command's output (stdout, else stderr), or None."""
    try:
        p = subprocess.run(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, timeout=timeout,
                           cwd=ROOT)
    except (OSError, subprocess.TimeoutExpired):
        return None
    text = (p.stdout.strip() or p.stderr.strip())
    if p.returncode != 0 or not text:
        return None
    return text.splitlines()[0].strip()


def cpuinfo():
    model = None
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name") and model is None:
                    model = line.split(":", 1)[1].strip()
    except OSError:
        pass
    return model or platform.processor() or None


def meminfo():
    out = {}
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                key, rest = line.split(":", 1)
                if key in ("MemTotal", "SwapTotal"):
                    out[key] = int(rest.split()[0])  # kB
    except OSError:
        pass
    return out


def os_name():
    try:
        with open("/etc/os-release") as fh:
            for line in fh:
                if line.startswith("PRETTY_NAME="):
                    return line.split("=", 1)[1].strip().strip('"')
    except OSError:
        pass
    return None


def module_version(name, attr="__version__"):
    try:
        mod = __import__(name)
    except Exception:  # noqa: BLE001 - any import failure means "not available"
        return None
    v = getattr(mod, attr, None)
    return v() if callable(v) else v


def main():
    mem = meminfo()
    ck = module_version("confluent_kafka", "version")
    lib = module_version("confluent_kafka", "libversion")
    flink_python = os.environ.get("BENCH_FLINK_PYTHON") or os.path.expanduser("~/.venvs/flink/bin/python")
    pyflink = None
    if os.path.exists(flink_python):
        pyflink = cmd(flink_python, "-c", "import pyflink.version as v; print(v.__version__)", timeout=60)
    dirty = cmd("git", "status", "--porcelain", "--untracked-files=no")
    info = {
        "time_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "hostname": platform.node(),
        "nproc": os.cpu_count(),
        "cpu_model": cpuinfo(),
        "mem_total_kib": mem.get("MemTotal"),
        "swap_total_kib": mem.get("SwapTotal"),
        "kernel": platform.release(),
        "os": os_name(),
        "loadavg": [round(x, 2) for x in os.getloadavg()],
        "git_head": cmd("git", "rev-parse", "HEAD"),
        # Only tracked files: a dirty tree means the figures are for uncommitted code.
        "git_dirty": bool(dirty),
        "rustc": cmd("rustc", "-V"),
        "cargo_target_dir": os.environ.get("CARGO_TARGET_DIR"),
        "python": platform.python_version(),
        "onnxruntime": module_version("onnxruntime"),
        "numpy": module_version("numpy"),
        "confluent_kafka": ck[0] if isinstance(ck, tuple) else ck,
        "librdkafka": lib[0] if isinstance(lib, tuple) else lib,
        # tansu --version is a version print, not a broker start.
        "tansu": cmd(os.environ.get("TANSU_BIN") or "tansu", "--version"),
        "pyflink": pyflink,
        "java": cmd("java", "-version") if pyflink else None,
    }
    json.dump(info, sys.stdout, indent=2)
    print()


if __name__ == "__main__":
    main()

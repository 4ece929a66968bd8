"""A throwaway tansu broker for the benchmarks (in-memory storage, free loopback port).

Started the same way as the Rust tests do (tests/src/lib.rs): the binary is
$TANSU_BIN, `tansu` on PATH, or ~/.cargo/bin/tansu.

    with Tansu() as broker:
        print(broker.brokers)           # "127.0.0.1:PORT"
        ...
        print(broker.cpu_seconds())     # broker CPU (user + sys) so far
"""

import os
import shutil
import socket
import subprocess
import time

CLK_TCK = os.sysconf("SC_CLK_TCK")


def tansu_binary():
    if os.environ.get("TANSU_BIN"):
        return os.environ["TANSU_BIN"]
    found = shutil.which("tansu")
    if found:
        return found
    home = os.path.expanduser("~/.cargo/bin/tansu")
    if os.path.isfile(home):
        return home
    raise SystemExit("tansu is not installed: cargo install tansu --version 0.6.0 --features dynostore")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def proc_cpu_seconds(pid):
    """user + sys CPU seconds of a live process, all its threads, from /proc/PID/stat."""
    with open("/proc/%d/stat" % pid) as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    # fields[0] is field 3 (state); utime, stime are fields 14, 15
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def proc_peak_rss_mib(pid):
    """VmHWM (peak resident set size) of a live process, MiB."""
    with open("/proc/%d/status" % pid) as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    return float("nan")


class Tansu:
    def __init__(self, timeout=20.0):
        self.timeout = timeout
        self.proc = None
        self.brokers = None

    def __enter__(self):
        from confluent_kafka.admin import AdminClient

        bin_ = tansu_binary()
        last = None
        for _ in range(5):
            port = free_port()
            url = "tcp://127.0.0.1:%d" % port
            env = dict(os.environ, RUST_LOG="error")
            self.proc = subprocess.Popen(
                [bin_, "broker", "--listener-url", url, "--advertised-listener-url", url,
                 "--storage-engine", "memory://tansu/"],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
            self.brokers = "127.0.0.1:%d" % port
            deadline = time.monotonic() + self.timeout
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    last = "tansu exited at start with %s" % self.proc.returncode
                    break
                try:
                    with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                        pass
                    AdminClient({"bootstrap.servers": self.brokers}).list_topics(timeout=2)
                    return self
                except Exception as e:  # not ready yet
                    last = e
                    time.sleep(0.02)
            self.stop()
        raise RuntimeError("tansu did not start: %s" % last)

    def cpu_seconds(self):
        return proc_cpu_seconds(self.proc.pid)

    def peak_rss_mib(self):
        return proc_peak_rss_mib(self.proc.pid)

    def stop(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def __exit__(self, *exc):
        self.stop()

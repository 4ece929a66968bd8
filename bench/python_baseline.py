#!/usr/bin/env python3
""""What users do today": examples/fraud/windows.sql written by hand in Python.

consume (confluent-kafka) -> json.loads -> per-(card, window) state for
HOP(slide 1 min, size 10 min) event-time windows -> fire on the watermark ->
onnxruntime (fraud.onnx) -> json.dumps -> produce.

    python3 bench/python_baseline.py --brokers 127.0.0.1:9092 \\
        --input transactions --output card-scores --mode per-message
    python3 bench/python_baseline.py ... --mode micro-batch --batch 1000

Semantics (those of windows.sql as weir runs it):
  * windows: every start that is a multiple of 1 minute (epoch aligned); an
    event at ts belongs to the 10 windows [s, s + 10 min) containing it;
  * per (card_id, window): n = count(*), avg_amount, max_amount,
    sd_amount = stddev_pop(amount), n_merchants = count(DISTINCT merchant);
  * watermark = min over the input partitions of (max ts seen in the
    partition) - 5 s (a partition that has sent nothing holds it at the start
    of time; a partition at its end keeps its last value); a window fires when
    watermark >= window_end - 1 ms; an event is not added to windows that have
    already fired (it is late for them; counted); at the end of the input
    (every partition at EOF) every window fires;
  * output (topic, key card_id), as card_scores in windows.sql:
    {"card_id", "window_end", "n", "avg_amount", "max_amount", "p_fraud"}.

Modes:
  per-message  consumer.poll() one message at a time; every fired window is
               scored by its own session.run on a [1, 5] array and produced.
  micro-batch  consumer.consume(--batch messages); the windows fired by the
               batch are scored by one session.run on a [k, 5] array.
Both produce one record per prediction (confluent-kafka has no batch produce).

The input is read from the beginning to partition EOF (bounded), with assign()
(no consumer group join); `fetch.wait.max.ms` is 5 because tansu holds every
fetch ~250 ms otherwise (shared/TESTING.md). Prints one JSON object: events,
predictions, wall seconds, CPU seconds (getrusage(RUSAGE_SELF) user + sys: the
whole process, librdkafka's threads included) and peak RSS.
"""

import argparse
import json
import math
import os
import resource
import sys
import time
from datetime import datetime, timezone

import numpy as np
import onnxruntime as ort
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, KafkaException, Producer, TopicPartition

HERE = os.path.dirname(os.path.abspath(__file__))
MODEL = os.path.join(HERE, "..", "examples", "fraud", "fraud.onnx")

SLIDE_MS = 60_000
SIZE_MS = 10 * 60_000
WATERMARK_DELAY_MS = 5_000
START_OF_TIME = -(2 ** 63)


def cpu_seconds():
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def parse_ts(s):
    """ISO-8601 ('2026-11-21T00:00:00.123Z') -> epoch milliseconds."""
    return round(datetime.fromisoformat(s).timestamp() * 1000)


def fmt_ts(ms):
    return datetime.fromtimestamp(ms / 1000, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


class HopWindows:
    """Open windows, grouped by window end: {end: {card_id: state}}.

    state = [n, mean, m2, max, merchants]: Welford's running mean and sum of
    squared deviations (stddev_pop = sqrt(m2 / n)), the max, and the set of
    merchants seen.
    """

    def __init__(self):
        self.panes = {}
        self.next_end = None  # smallest open window end
        self.fired_through = START_OF_TIME
        self.late = 0  # (event, window) pairs dropped because the window had fired

    def add(self, card, merchant, amount, ts):
        last_start = ts - ts % SLIDE_MS
        for start in range(last_start, last_start - SIZE_MS, -SLIDE_MS):
            end = start + SIZE_MS
            if end - 1 <= self.fired_through:
                self.late += 1
                continue
            pane = self.panes.get(end)
            if pane is None:
                pane = self.panes[end] = {}
                if self.next_end is None or end < self.next_end:
                    self.next_end = end
            st = pane.get(card)
            if st is None:
                pane[card] = [1, amount, 0.0, amount, {merchant}]
            else:
                n = st[0] + 1
                delta = amount - st[1]
                mean = st[1] + delta / n
                st[0] = n
                st[1] = mean
                st[2] += delta * (amount - mean)
                if amount > st[3]:
                    st[3] = amount
                st[4].add(merchant)

    def ready(self, watermark):
        """Removes and returns [(end, pane)] of the windows the watermark closes, oldest first."""
        if self.next_end is None or self.next_end - 1 > watermark:
            return []
        ends = sorted(e for e in self.panes if e - 1 <= watermark)
        out = [(e, self.panes.pop(e)) for e in ends]
        self.fired_through = max(self.fired_through, watermark)
        self.next_end = min(self.panes) if self.panes else None
        return out


def features(st):
    n, mean, m2, mx, merchants = st
    return [n, mean, mx, math.sqrt(m2 / n), len(merchants)]


class Pipeline:
    def __init__(self, args):
        self.args = args
        self.session = ort.InferenceSession(MODEL if args.model is None else args.model,
                                            providers=["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name  # "features"
        self.windows = HopWindows()
        self.producer = Producer({
            "bootstrap.servers": args.brokers,
            "linger.ms": 20,
            "batch.num.messages": 10000,
            "queue.buffering.max.messages": 1000000,
        })
        self.predictions = 0
        self.bad = 0
        self.dump = open(args.dump_windows, "w") if args.dump_windows else None
        self.end_ms = None  # window end being scored (for --dump-windows)

    # --- input ----------------------------------------------------------
    def consumer(self):
        c = Consumer({
            "bootstrap.servers": self.args.brokers,
            "group.id": "python-baseline-%d" % os.getpid(),
            "enable.partition.eof": True,
            "enable.auto.commit": False,
            "fetch.wait.max.ms": 5,  # tansu holds fetches ~250 ms otherwise
            **dict(kv.split("=", 1) for kv in self.args.consumer_config),
        })
        md = c.list_topics(self.args.input, timeout=10).topics[self.args.input]
        if md.error is not None:
            raise KafkaException(md.error)
        parts = sorted(md.partitions)
        c.assign([TopicPartition(self.args.input, p, OFFSET_BEGINNING) for p in parts])
        return c, parts

    # --- output ---------------------------------------------------------
    def produce(self, card, value):
        while True:
            try:
                self.producer.produce(self.args.output, value=value, key=card)
                return
            except BufferError:
                self.producer.poll(0.05)

    def emit(self, card, end_s, f, p):
        self.produce(card, json.dumps({"card_id": card, "window_end": end_s, "n": f[0],
                                       "avg_amount": f[1], "max_amount": f[2], "p_fraud": p}))
        if self.dump is not None:
            self.dump.write(json.dumps({"card_id": card, "window_start": fmt_ts(self.end_ms - SIZE_MS),
                                        "window_end": end_s, "n": f[0], "avg_amount": f[1],
                                        "max_amount": f[2], "sd_amount": f[3], "n_merchants": f[4],
                                        "p_fraud": p}) + "\n")

    def score_one_by_one(self, fired):
        for end, pane in fired:
            end_s = fmt_ts(end)
            self.end_ms = end
            for card, st in pane.items():
                f = features(st)
                x = np.array([f], dtype=np.float32)
                p = float(self.session.run(None, {self.input_name: x})[0][0, 1])
                self.emit(card, end_s, f, p)
                self.predictions += 1
            self.producer.poll(0)

    def score_batched(self, fired):
        for end, pane in fired:
            end_s = fmt_ts(end)
            self.end_ms = end
            cards = list(pane)
            feats = [features(st) for st in pane.values()]
            x = np.array(feats, dtype=np.float32)
            probs = self.session.run(None, {self.input_name: x})[0][:, 1].tolist()
            for card, f, p in zip(cards, feats, probs):
                self.emit(card, end_s, f, p)
            self.predictions += len(cards)
            self.producer.poll(0)

    # --- main loop ------------------------------------------------------
    def run(self):
        consumer, parts = self.consumer()
        max_ts = {p: START_OF_TIME for p in parts}
        watermark = START_OF_TIME
        at_eof = set()
        events = 0
        score = self.score_one_by_one if self.args.mode == "per-message" else self.score_batched
        windows = self.windows
        t_first = None

        def handle(msg):
            nonlocal events, watermark
            err = msg.error()
            if err is not None:
                if err.code() == KafkaError._PARTITION_EOF:
                    at_eof.add(msg.partition())
                    return
                raise KafkaException(err)
            try:
                ev = json.loads(msg.value())
                card = ev["card_id"]
                ts = parse_ts(ev["ts"])
                windows.add(card, ev["merchant"], float(ev["amount"]), ts)
            except (ValueError, KeyError, TypeError):
                self.bad += 1
                return
            events += 1
            p = msg.partition()
            if ts > max_ts[p]:
                max_ts[p] = ts
                wm = min(max_ts.values())
                if wm != START_OF_TIME:
                    watermark = max(watermark, wm - WATERMARK_DELAY_MS)

        if self.args.mode == "per-message":
            while len(at_eof) < len(parts):
                msg = consumer.poll(1.0)
                if msg is None:
                    continue
                if t_first is None:
                    t_first = time.monotonic()
                handle(msg)
                fired = windows.ready(watermark)
                if fired:
                    score(fired)
        else:
            while len(at_eof) < len(parts):
                msgs = consumer.consume(self.args.batch, 1.0)
                if not msgs:
                    continue
                if t_first is None:
                    t_first = time.monotonic()
                for msg in msgs:
                    handle(msg)
                fired = windows.ready(watermark)
                if fired:
                    score(fired)
        # end of input: every window fires
        score(windows.ready(2 ** 62))
        left = self.producer.flush(300)
        consumer.close()
        if self.dump is not None:
            self.dump.close()
        if left:
            raise SystemExit("%d predictions not delivered" % left)
        return events, t_first


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--brokers", required=True)
    ap.add_argument("--input", default="transactions")
    ap.add_argument("--output", default="card-scores")
    ap.add_argument("--mode", choices=["per-message", "micro-batch"], default="micro-batch")
    ap.add_argument("--batch", type=int, default=1000, help="micro-batch: messages per consume()")
    ap.add_argument("--consumer-config", action="append", default=[], metavar="KEY=VALUE",
                    help="extra librdkafka consumer setting (repeatable), e.g. "
                    "fetch.max.bytes=1048576 max.partition.fetch.bytes=262144")
    ap.add_argument("--model", help="ONNX model (default examples/fraud/fraud.onnx)")
    ap.add_argument("--dump-windows", help="also write every fired window's features and "
                    "p_fraud as JSONL here (for compare_windows.py; not for timed runs)")
    a = ap.parse_args(argv)

    t0, c0 = time.monotonic(), cpu_seconds()
    pipe = Pipeline(a)
    events, t_first = pipe.run()
    t1, c1 = time.monotonic(), cpu_seconds()
    peak_rss_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    wall = t1 - t0
    cpu = c1 - c0
    print(json.dumps({
        "mode": a.mode,
        "consumer_config": a.consumer_config,
        "batch": a.batch if a.mode == "micro-batch" else 1,
        "events": events,
        "bad": pipe.bad,
        "late_event_windows": pipe.windows.late,
        "predictions": pipe.predictions,
        "wall_s": round(wall, 3),
        "wall_from_first_message_s": round(t1 - t_first, 3) if t_first else None,
        "events_per_s": round(events / wall) if wall > 0 else None,
        "cpu_s": round(cpu, 3),
        "cpu_s_per_million_events": round(cpu / events * 1e6, 3) if events else None,
        "cpu_s_process_total": round(c1, 3),
        "peak_rss_mib": round(peak_rss_mib, 1),
    }))


if __name__ == "__main__":
    main()

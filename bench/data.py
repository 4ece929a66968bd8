#!/usr/bin/env python3
"""Benchmark input: N fraud-example transactions as JSONL and/or on a Kafka topic.

Events are exactly `python3 examples/fraud/generator.py --events N --seed S
--cards C` (same module, same `json.dumps` lines), so weir, the Python
baseline and Flink all read the same bytes.

    # write the JSONL file (generation is pure Python: ~27k events/s)
    python3 bench/data.py --events 1000000 --jsonl /tmp/events-1m.jsonl

    # produce an existing file to a topic with P partitions (keyed by card_id)
    python3 bench/data.py --from-jsonl /tmp/events-1m.jsonl \\
        --brokers 127.0.0.1:9092 --topic transactions --partitions 4

    # both at once (generate, write the file, produce)
    python3 bench/data.py --events 1000000 --jsonl /tmp/events-1m.jsonl \\
        --brokers 127.0.0.1:9092 --topic transactions --partitions 4

Records: key = card_id (UTF-8), value = the JSON line without its newline.
Partitioner `murmur2_random` (the Java client's), so a card's events are in
one partition, in generation order. Prints one JSON object with the counts
and byte sizes.
"""

import argparse
import json
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "examples", "fraud"))


def generate_lines(events, seed, cards, start):
    import generator

    for ev in generator.generate(events, seed, cards, start):
        yield json.dumps(ev)


def read_lines(path):
    with open(path) as fh:
        for line in fh:
            line = line.rstrip("\n")
            if line:
                yield line


def create_topic(brokers, topic, partitions):
    from confluent_kafka.admin import AdminClient, NewTopic

    admin = AdminClient({"bootstrap.servers": brokers})
    futures = admin.create_topics([NewTopic(topic, num_partitions=partitions, replication_factor=1)])
    for f in futures.values():
        try:
            f.result(timeout=15)
        except Exception as e:  # already there is fine
            if "TOPIC_ALREADY_EXISTS" not in str(e) and "already exists" not in str(e):
                raise


class TopicWriter:
    def __init__(self, brokers, topic):
        from confluent_kafka import Producer

        self.topic = topic
        self.producer = Producer({
            "bootstrap.servers": brokers,
            "linger.ms": 20,
            "batch.num.messages": 10000,
            "queue.buffering.max.messages": 1000000,
            "queue.buffering.max.kbytes": 1048576,
            "partitioner": "murmur2_random",
        })
        self.errors = 0

    def _cb(self, err, _msg):
        if err is not None:
            self.errors += 1

    def write(self, key, value):
        while True:
            try:
                self.producer.produce(self.topic, value=value, key=key, on_delivery=self._cb)
                return
            except BufferError:
                self.producer.poll(0.05)

    def close(self):
        left = self.producer.flush(120)
        if left or self.errors:
            raise SystemExit("produce failed: %d undelivered, %d errors" % (left, self.errors))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--events", type=int, help="generate this many events")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--cards", type=int, default=100000)
    ap.add_argument("--start", default="2026-11-21T00:00:00Z")
    ap.add_argument("--jsonl", help="write the generated events here")
    ap.add_argument("--from-jsonl", help="read events from this file instead of generating")
    ap.add_argument("--brokers", help="produce to this Kafka cluster")
    ap.add_argument("--topic", default="transactions")
    ap.add_argument("--partitions", type=int, default=4)
    a = ap.parse_args(argv)
    if (a.events is None) == (a.from_jsonl is None):
        ap.error("give exactly one of --events and --from-jsonl")
    if a.jsonl is None and a.brokers is None:
        ap.error("nothing to do: give --jsonl and/or --brokers")

    lines = read_lines(a.from_jsonl) if a.from_jsonl else generate_lines(a.events, a.seed, a.cards, a.start)
    out = open(a.jsonl, "w") if a.jsonl and not a.from_jsonl else None
    writer = None
    if a.brokers:
        create_topic(a.brokers, a.topic, a.partitions)
        writer = TopicWriter(a.brokers, a.topic)

    t0 = time.monotonic()
    n = value_bytes = key_bytes = 0
    for line in lines:
        n += 1
        value_bytes += len(line)
        if out is not None:
            out.write(line)
            out.write("\n")
        if writer is not None:
            key = json.loads(line)["card_id"].encode()
            key_bytes += len(key)
            writer.write(key, line.encode())
    if writer is not None:
        writer.close()
    if out is not None:
        out.close()
    elapsed = time.monotonic() - t0
    report = {
        "events": n,
        "value_bytes": value_bytes,
        "avg_value_bytes": round(value_bytes / n, 1) if n else 0,
        "seconds": round(elapsed, 2),
    }
    if a.jsonl and not a.from_jsonl:
        report["jsonl"] = a.jsonl
        report["jsonl_bytes"] = os.path.getsize(a.jsonl)
    if writer is not None:
        report.update(topic=a.topic, partitions=a.partitions, key_bytes=key_bytes,
                      produce_rate=round(n / elapsed) if elapsed > 0 else None)
    print(json.dumps(report))


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""Proves every listener of the broker that `scripts/kafka.sh start DIR` runs,
with a real librdkafka client (confluent-kafka).

    python3 scripts/kafka/check.py DIR/listeners.env

For each listener (and each SASL mechanism on the SASL listeners): create a
topic with the admin API, produce a record, consume it back through a consumer
group. Then: a committed transaction is visible to a read_committed consumer
and an aborted one is not; wrong SCRAM / PLAIN passwords fail; a client that
trusts only OTHER_CA fails on SSL; a client without a certificate (or with one
from OTHER_CA) fails on MTLS; zstd, lz4, snappy and gzip round-trip; the
broker's 1 MB message.max.bytes is enforced. Prints one line per check and
'N passed, N failed'; exits non-zero if any failed.
"""
import sys
import time
import uuid

from confluent_kafka import (
    Consumer,
    KafkaError,
    KafkaException,
    Producer,
    TopicPartition,
    libversion,
)
from confluent_kafka.admin import AdminClient, NewTopic

TIMEOUT = 20.0


def load_env(path):
    env = {}
    with open(path) as f:
        for line in f:
            line = line.strip()
            if line and not line.startswith("#") and "=" in line:
                k, v = line.split("=", 1)
                env[k] = v
    return env


def client_configs(env):
    """The librdkafka properties of each listener: what weir's tests use."""
    ca = {"ssl.ca.location": env["CA"]}
    scram = {
        "sasl.mechanisms": "SCRAM-SHA-512",
        "sasl.username": env["SCRAM_USER"],
        "sasl.password": env["SCRAM_PASSWORD"],
    }
    plain = {
        "sasl.mechanisms": "PLAIN",
        "sasl.username": env["PLAIN_USER"],
        "sasl.password": env["PLAIN_PASSWORD"],
    }
    return {
        "PLAINTEXT": {"bootstrap.servers": env["PLAINTEXT"]},
        "SSL": {"bootstrap.servers": env["SSL"], "security.protocol": "SSL", **ca},
        "MTLS": {
            "bootstrap.servers": env["MTLS"],
            "security.protocol": "SSL",
            **ca,
            "ssl.certificate.location": env["CLIENT_CERT"],
            "ssl.key.location": env["CLIENT_KEY"],
        },
        "SASL_PLAINTEXT/SCRAM-SHA-512": {
            "bootstrap.servers": env["SASL_PLAINTEXT"],
            "security.protocol": "SASL_PLAINTEXT",
            **scram,
        },
        "SASL_PLAINTEXT/PLAIN": {
            "bootstrap.servers": env["SASL_PLAINTEXT"],
            "security.protocol": "SASL_PLAINTEXT",
            **plain,
        },
        "SASL_PLAINTEXT/SCRAM-SHA-256": {
            "bootstrap.servers": env["SASL_PLAINTEXT"],
            "security.protocol": "SASL_PLAINTEXT",
            **scram,
            "sasl.mechanisms": "SCRAM-SHA-256",
        },
        "SASL_SSL/SCRAM-SHA-512": {
            "bootstrap.servers": env["SASL_SSL"],
            "security.protocol": "SASL_SSL",
            **ca,
            **scram,
        },
        "SASL_SSL/PLAIN": {
            "bootstrap.servers": env["SASL_SSL"],
            "security.protocol": "SASL_SSL",
            **ca,
            **plain,
        },
        "OAUTHBEARER": {
            "bootstrap.servers": env["OAUTHBEARER"],
            "security.protocol": "SASL_PLAINTEXT",
            "sasl.mechanisms": "OAUTHBEARER",
            "enable.sasl.oauthbearer.unsecure.jwt": True,
            "sasl.oauthbearer.config": "principal=" + env.get("OAUTH_PRINCIPAL", "weir"),
        },
    }


class Errors:
    """Collects what librdkafka reports through error_cb."""

    def __init__(self):
        self.seen = []

    def __call__(self, err):
        self.seen.append(err)


def new_topic(conf, name, partitions=1):
    errs = Errors()
    admin = AdminClient({**conf, "error_cb": errs})
    fut = admin.create_topics([NewTopic(name, partitions, 1)], operation_timeout=TIMEOUT, request_timeout=TIMEOUT)[name]
    fut.result(timeout=TIMEOUT)


def produce(conf, topic, values, extra=None):
    errs = Errors()
    p = Producer({**conf, "error_cb": errs, "linger.ms": 5, **(extra or {})})
    failures = []

    def dr(err, msg):
        if err is not None:
            failures.append(err)

    for i, v in enumerate(values):
        p.produce(topic, key=str(i).encode(), value=v, on_delivery=dr)
    left = p.flush(TIMEOUT)
    if left or failures:
        raise RuntimeError(f"produce: {left} undelivered, failures={failures[:3]} errors={errs.seen[:3]}")


def consume_all(conf, topic, expect_n=None, group=None, extra=None, partitions=1):
    """Reads the topic to its end (partition EOF). With a group: subscribe,
    else assign partition 0.. from the beginning."""
    errs = Errors()
    c = Consumer(
        {
            **conf,
            "error_cb": errs,
            "group.id": group or ("check-" + uuid.uuid4().hex[:8]),
            "auto.offset.reset": "earliest",
            "enable.partition.eof": True,
            "enable.auto.commit": False,
            "fetch.wait.max.ms": 50,
            **(extra or {}),
        }
    )
    if group:
        c.subscribe([topic])
    else:
        c.assign([TopicPartition(topic, p, 0) for p in range(partitions)])
    got = []
    eofs = set()
    deadline = time.monotonic() + TIMEOUT
    try:
        while time.monotonic() < deadline:
            m = c.poll(0.5)
            if m is None:
                continue
            if m.error():
                if m.error().code() == KafkaError._PARTITION_EOF:
                    eofs.add(m.partition())
                    if len(eofs) == partitions and (expect_n is None or len(got) >= expect_n):
                        break
                    continue
                raise KafkaException(m.error())
            got.append(m.value())
        else:
            raise RuntimeError(f"consume: timed out with {len(got)} records, errors={errs.seen[:3]}")
        if group:
            c.commit(asynchronous=False)
    finally:
        c.close()
    return got


def expect_refused(conf, what, codes):
    """The client must fail to talk to the broker, and librdkafka's error_cb
    must report one of `codes` (authentication and TLS failures do not fail a
    call by themselves: they arrive only there). Returns what was seen."""
    errs = Errors()
    p = Producer({**conf, "error_cb": errs, "log_level": 0})
    try:
        md = p.list_topics(timeout=3)
        raise RuntimeError(f"{what}: the broker answered (brokers={list(md.brokers)}) but should have refused")
    except KafkaException:
        pass
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        p.poll(0.2)
        hit = [e for e in errs.seen if e.code() in codes]
        if hit:
            return f"{hit[0].name()}: {hit[0].str()[:160]}"
    seen = sorted({e.name() for e in errs.seen})
    raise RuntimeError(f"{what}: refused, but error_cb saw {seen}, not one of {[KafkaError(c).name() for c in codes]}")


results = []


def check(name, fn):
    t0 = time.monotonic()
    try:
        detail = fn()
        results.append((name, True))
        print(f"PASS {name} ({time.monotonic() - t0:.1f} s){': ' + detail if detail else ''}", flush=True)
    except Exception as e:  # noqa: BLE001
        results.append((name, False))
        print(f"FAIL {name} ({time.monotonic() - t0:.1f} s): {e!r}", flush=True)


def main():
    env = load_env(sys.argv[1])
    confs = client_configs(env)
    run = uuid.uuid4().hex[:6]
    print(f"librdkafka {libversion()[0]}, Kafka {env.get('KAFKA_VERSION', '?')}", flush=True)

    # Each listener: admin create, produce, consume through a group.
    for name, conf in confs.items():
        def roundtrip(name=name, conf=conf):
            topic = f"check-{name.replace('/', '-').lower()}-{run}"
            new_topic(conf, topic)
            value = f"hello over {name}".encode()
            produce(conf, topic, [value])
            got = consume_all(conf, topic, expect_n=1, group=f"g-{topic}")
            assert got == [value], got
        check(f"listener {name}: create topic, produce, consume (group)", roundtrip)

    plain = confs["PLAINTEXT"]

    # Transactions, on PLAINTEXT and over SASL_SSL/SCRAM.
    for name in ("PLAINTEXT", "SASL_SSL/SCRAM-SHA-512"):
        def txn(name=name):
            conf = confs[name]
            topic = f"check-txn-{name.replace('/', '-').lower()}-{run}"
            new_topic(conf, topic)
            p = Producer({**conf, "transactional.id": f"check-{topic}"})
            p.init_transactions(TIMEOUT)
            for label, commit in (("committed-1", True), ("aborted-1", False), ("committed-2", True)):
                p.begin_transaction()
                p.produce(topic, value=label.encode())
                if commit:
                    p.commit_transaction(TIMEOUT)
                else:
                    p.flush(TIMEOUT)
                    p.abort_transaction(TIMEOUT)
            committed = consume_all(conf, topic, extra={"isolation.level": "read_committed"})
            assert committed == [b"committed-1", b"committed-2"], committed
            everything = consume_all(conf, topic, extra={"isolation.level": "read_uncommitted"})
            assert everything == [b"committed-1", b"aborted-1", b"committed-2"], everything
            return "read_committed saw committed-1, committed-2; read_uncommitted also aborted-1"
        check(f"transactions on {name}: commit visible, abort hidden (read_committed)", txn)

    # Compression round trips.
    for codec in ("zstd", "lz4", "snappy", "gzip"):
        def comp(codec=codec):
            topic = f"check-{codec}-{run}"
            new_topic(plain, topic)
            values = [(f"{codec} record {i} " + "abcdefgh" * 50).encode() for i in range(500)]
            produce(plain, topic, values, extra={"compression.type": codec})
            got = consume_all(plain, topic, expect_n=len(values))
            assert got == values, (len(got), len(values))
        check(f"compression {codec}: produce + consume round trip", comp)

    # message.max.bytes (broker default 1 MB) is enforced.
    def max_bytes():
        topic = f"check-size-{run}"
        new_topic(plain, topic)
        produce(plain, topic, [b"x" * 900_000], extra={"message.max.bytes": 4_000_000})
        try:
            produce(plain, topic, [b"x" * 1_500_000], extra={"message.max.bytes": 4_000_000, "compression.type": "none"})
        except RuntimeError as e:
            assert "MSG_SIZE_TOO_LARGE" in str(e), e
            return "900 kB accepted, 1.5 MB refused with MSG_SIZE_TOO_LARGE"
        raise AssertionError("a 1.5 MB record was accepted")
    check("broker message.max.bytes 1 MB enforced", max_bytes)

    # Refusals, each with the error code librdkafka's error_cb reports.
    AUTH = {KafkaError._AUTHENTICATION}
    TLS = {KafkaError._SSL}

    def refused(name, conf, codes):
        check(f"refused: {name}", lambda: expect_refused(conf, name, codes))

    for lst in ("SASL_PLAINTEXT", "SASL_SSL"):
        refused(f"{lst} SCRAM-SHA-512 with a wrong password",
                {**confs[f"{lst}/SCRAM-SHA-512"], "sasl.password": "wrong"}, AUTH)
        refused(f"{lst} PLAIN with a wrong password",
                {**confs[f"{lst}/PLAIN"], "sasl.password": "wrong"}, AUTH)
    refused("SASL_PLAINTEXT SCRAM-SHA-512 with an unknown user",
            {**confs["SASL_PLAINTEXT/SCRAM-SHA-512"], "sasl.username": "nobody"}, AUTH)
    refused("SSL with a client trusting only OTHER_CA",
            {**confs["SSL"], "ssl.ca.location": env["OTHER_CA"]}, TLS)
    refused("SASL_SSL with a client trusting only OTHER_CA",
            {**confs["SASL_SSL/SCRAM-SHA-512"], "ssl.ca.location": env["OTHER_CA"]}, TLS)
    # TLS 1.3: the client's handshake completes before the broker checks its
    # certificate, so the refusal is a "bad certificate" alert on first read.
    refused("MTLS without a client certificate",
            {"bootstrap.servers": env["MTLS"], "security.protocol": "SSL", "ssl.ca.location": env["CA"]},
            TLS | {KafkaError._TRANSPORT})
    if env.get("OTHER_CLIENT_CERT"):
        refused("MTLS with a client certificate signed by OTHER_CA",
                {**confs["MTLS"], "ssl.certificate.location": env["OTHER_CLIENT_CERT"],
                 "ssl.key.location": env["OTHER_CLIENT_KEY"]},
                TLS | {KafkaError._TRANSPORT})
    refused("OAUTHBEARER listener with SASL PLAIN (mechanism not enabled)",
            {"bootstrap.servers": env["OAUTHBEARER"], "security.protocol": "SASL_PLAINTEXT",
             "sasl.mechanisms": "PLAIN", "sasl.username": env["PLAIN_USER"], "sasl.password": env["PLAIN_PASSWORD"]},
            AUTH | {KafkaError.UNSUPPORTED_SASL_MECHANISM})
    refused("SASL_PLAINTEXT without SASL (plaintext client)",
            {"bootstrap.servers": env["SASL_PLAINTEXT"]}, {KafkaError._TRANSPORT, KafkaError._ALL_BROKERS_DOWN})

    passed = sum(1 for _, ok in results if ok)
    failed = len(results) - passed
    print(f"{passed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

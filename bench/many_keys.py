#!/usr/bin/env python3
"""Events for the state-size benchmark (issue 6: peak RSS with 1M active keys).

Writes N fraud-example transactions as JSONL (the same fields as data.py's)
where card i % K buys at time start + i * span / N: every one of the K cards
has events in the same few minutes, so the HOP(1 min, 10 min) windows hold
K keys at once (data.py's generator spreads cards over hours).

    python3 bench/many_keys.py --events 2000000 --cards 1000000 --out /tmp/wb/keys-1m.jsonl
    python3 bench/weir_bench.py --events-file /tmp/wb/keys-1m.jsonl --partitions 4 --variants weir
"""

import argparse
import random


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--events", type=int, default=2_000_000)
    ap.add_argument("--cards", type=int, default=1_000_000)
    ap.add_argument("--span-seconds", type=int, default=300)
    ap.add_argument("--start-ms", type=int, default=1_767_225_600_000)  # 2026-01-01
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    rng = random.Random(a.seed)
    import datetime as dt

    with open(a.out, "w") as f:
        for i in range(a.events):
            ms = a.start_ms + i * a.span_seconds * 1000 // a.events
            ts = dt.datetime.fromtimestamp(ms / 1000, dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
            f.write('{"card_id": "card-%07d", "merchant": "m-%04d", "amount": %.2f, "ts": "%s", "is_fraud": false}\n'
                    % (i % a.cards, rng.randrange(1000), rng.lognormvariate(3.0, 0.6), ts))


if __name__ == "__main__":
    main()

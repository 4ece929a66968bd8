#!/usr/bin/env python3
"""Deterministic generator of synthetic card transactions (one JSON object per line).

    python3 generator.py --events N --seed S --cards C --start 2026-11-21T00:00:00Z > out.jsonl
    python3 generator.py --merchant-table --start 2026-11-21T00:00:00Z > merchants.jsonl

Output line (keys in this order, Python ``json.dumps`` default separators):

    {"card_id": "card-000123", "merchant": "m-0042", "amount": 12.34, "ts": "2026-11-21T10:00:00.123Z", "is_fraud": false}

With ``--merchant-table`` it prints instead the merchant table (no random
draws; ``--events``, ``--seed``, ``--cards`` and ``--rate`` are ignored), one
line per merchant i = 0 .. M-1 in order, for a compacted topic keyed by
merchant:

    {"key": "m-0042", "value": {"merchant": "m-0042", "risk": 0.611, "category": "online", "updated_at": "2026-11-21T00:00:00.000Z"}}

This file is the reference for the Rust port (``weir generate fraud``); the
algorithm is meant to be ported line for line.  Everything below is exact.

Random numbers
--------------
One generator, ``rng = random.Random(seed)`` (MT19937; CPython seeds an int with
``init_by_array`` over the 32-bit little-endian words of ``abs(seed)``, ``[0]`` for
0).  The ONLY draw used is ``U() = rng.random()`` = ``(a>>5 * 67108864 + b>>6) /
2**53`` from two consecutive 32-bit outputs a, b.  Derived draws (each consumes
exactly the U() calls shown, left to right):

    int_below(n)    = floor(U() * n)                       # 1 draw, 0 <= r < n
    normal()        = sqrt(-2 ln(1 - U1)) * cos(2 pi U2)    # 2 draws (Box-Muller, no caching)
    skewed_below(n) = floor(U1 * U1 * n)                    # 1 draw (U1 used twice); low indices popular

Float maths is IEEE f64 (ln, exp, cos, sqrt from the C library); ``//`` is
integer floor division.  All times are integer milliseconds since the Unix epoch.  ``cents(x)`` =
``floor(x * 100 + 0.5)`` as an integer, clamped to at least 1; the emitted
amount is ``cents / 100`` (shortest round-trip float repr, e.g. 12.3, 1200.0).

Merchants (deterministic, no draws), for merchant index i = 0 .. M-1:

    risk(i)      = ((i * 7919 + 13) % 1000) / 1000.0      # 0.000 .. 0.999, each value once
    category(i)  = CATEGORIES[(i * 31 + 7) % 8]
    CATEGORIES   = ["grocery", "fuel", "restaurants", "travel",
                    "electronics", "online", "gift-cards", "gaming"]
    compromised  = (i * 7919 + 13) % 1000 >= 900           # i.e. risk(i) >= 0.9
    COMPROMISED  = sorted list of the compromised indices  # exactly 100 (7919 is prime to 1000):
                   [1, 13, 25, 26, 38, 50, 62, 63, 75, 87, ..., 976, 988, 989]
    table row i  : key "m-%04d" % i; value {"merchant": key, "risk": risk(i),
                   "category": category(i), "updated_at": fmt_ts(start_ms)}

Fraud episodes prefer compromised merchants.  Wherever an episode picks a
merchant it uses

    pick_merchant() = COMPROMISED[int_below(100)] if U() < 0.7 else int_below(M)
                      # 2 draws: first the U() < 0.7 test, then the index

Constants: M = 1000 merchants ("m-%04d"), FRAUD_MOD = 67, FRAUD_REM = 13
(cards with index % 67 == 13 are fraud-prone: ~1.5 % of cards),
EPISODES_PER_SEC = 0.2 (simulated), rate R = --rate (integer, default 200
events per simulated second), C = --cards (default 100000), N = --events.
With the defaults an ordinary card makes ~5 purchases per hour and a heavy
card (index < C/20) ~50; about 2-3 % of events are fraud.

1. Card profiles, for card index i = 0 .. C-1 in order:
       n_fav  = 2 + int_below(4)                    # 2..5 favourite merchants
       favs   = [skewed_below(M) for each of n_fav] # may repeat; that's fine
       mu     = 2.3 + 1.4 * U()                     # median spend e^mu: ~10 .. ~40
       sigma  = 0.4 + 0.4 * U()

2. Events, for slot k = 0 .. N-1:
       now = start_ms + floor(k * 1000 / R)         # integer arithmetic: (k*1000)//R
   a. Due episode?  Among active episodes, take the one with the smallest
      next_ms (ties: the earliest started).  If next_ms <= now, this slot is a
      fraud event of that episode (step 3); base time t = next_ms.
   b. Otherwise, if U() < EPISODES_PER_SEC / R: start a new episode at now
      (step 4) and emit its first event in this slot (step 3), t = now.
   c. Otherwise an ordinary event, t = now:
       if U() < 0.3: card = int_below(C // 20)      # the first 5 % of cards are heavy users
       else:         card = int_below(C)
       if U() < 0.9: merchant = favs[int_below(n_fav)] else: merchant = skewed_below(M)
       x        = exp(mu + sigma * normal())
       if U() < 0.01: x = x * (5 + 15 * U())        # rare legitimate big purchase
       amount   = cents(x), is_fraud = false
   d. Jitter (every event, after a/b/c):
       if U() < 0.01: lag = int_below(3000) else: lag = int_below(20)
       ts = max(t - lag, start_ms)
   Note the draw order in b: the U() for "start an episode?" is drawn only when
   no episode was due in a.

3. An episode event (episode e with kind, card, merchant0, next_ms, end_ms):
       kind 0 "burst"  (card testing: many small charges at 1-2 merchants)
           merchant = merchant0 if U() < 0.7 else merchant0 + 1 (mod M)
           amount   = cents(0.5 + 4.5 * U())
           gap_ms   = 2000 + int_below(6000)
       kind 1 "large"  (sudden large amounts, mostly at compromised merchants)
           merchant = pick_merchant()
           amount   = cents(exp(ln(300) + 2.3 * U()))   # 300 .. ~3000
           gap_ms   = 20000 + int_below(40000)
       kind 2 "spread" (many distinct merchants within minutes)
           merchant = pick_merchant()
           amount   = cents(exp(mu_card + sigma_card * normal()) * (1 + 2 * U()))
           gap_ms   = 5000 + int_below(15000)
       (pick_merchant's 2 draws come first, before the amount's.)
       is_fraud = true; e.next_ms += gap_ms; if e.next_ms > e.end_ms the episode
       ends (removed from the active list).

4. New episode (started at time now):
       card      = FRAUD_MOD * int_below(C // FRAUD_MOD) + FRAUD_REM   (needs C >= 67)
       kind      = int_below(3)
       merchant0 = pick_merchant()      # drawn for every kind (only burst uses it)
       end_ms    = now + 120000 + int_below(360000)           # lasts 2..8 minutes
       next_ms   = now        (first event emitted right away in this slot)
   Episodes are kept in a list in start order; removal keeps the order.
   The draws of a new episode are therefore, in order: int_below(C // 67)
   (card), int_below(3) (kind), U() < 0.7 then int_below(100) or
   int_below(M) (merchant0), int_below(360000) (end); then its first event
   (step 3).  A burst's second merchant, merchant0 + 1 (mod M), is not
   re-drawn; when merchant0 is compromised its risk is 0.819 .. 0.918.

Timestamps are formatted as UTC ``YYYY-MM-DDTHH:MM:SS.mmmZ``.
"""

import argparse
import datetime as _dt
import json
import math
import random
import sys

M = 1000
FRAUD_MOD = 67
FRAUD_REM = 13
EPISODES_PER_SEC = 0.2
CATEGORIES = ["grocery", "fuel", "restaurants", "travel",
              "electronics", "online", "gift-cards", "gaming"]
P_COMPROMISED = 0.7
EPOCH = _dt.datetime(1970, 1, 1, tzinfo=_dt.timezone.utc)


def parse_ts(s):
    """'2026-11-21T00:00:00Z' or with '.123Z' -> epoch milliseconds."""
    if not s.endswith("Z"):
        raise ValueError("timestamp must end with Z: %r" % s)
    body = s[:-1]
    if "." in body:
        main, frac = body.split(".")
        ms = int((frac + "000")[:3])
    else:
        main, ms = body, 0
    d = _dt.datetime.strptime(main, "%Y-%m-%dT%H:%M:%S").replace(tzinfo=_dt.timezone.utc)
    return (d - EPOCH) // _dt.timedelta(seconds=1) * 1000 + ms


def fmt_ts(ms):
    d = EPOCH + _dt.timedelta(milliseconds=ms)
    return d.strftime("%Y-%m-%dT%H:%M:%S") + ".%03dZ" % (ms % 1000)


def risk_permille(i):
    return (i * 7919 + 13) % 1000


def risk(i):
    """Merchant i's risk score, 0.000 .. 0.999."""
    return risk_permille(i) / 1000.0


def category(i):
    return CATEGORIES[(i * 31 + 7) % 8]


COMPROMISED = [i for i in range(M) if risk_permille(i) >= 900]  # sorted, 100 merchants


def merchant_table(start_ms):
    """The merchant table's records (compacted topic, keyed by merchant), one per
    merchant in index order, all versioned at start_ms."""
    updated = fmt_ts(start_ms)
    out = []
    for i in range(M):
        name = "m-%04d" % i
        out.append({"key": name, "value": {"merchant": name, "risk": risk(i),
                                           "category": category(i), "updated_at": updated}})
    return out


def cents(x):
    c = int(math.floor(x * 100.0 + 0.5))
    return c if c >= 1 else 1


class Gen:
    def __init__(self, seed, cards, start_ms, rate=200):
        if cards < FRAUD_MOD:
            raise ValueError("need at least %d cards" % FRAUD_MOD)
        self.rng = random.Random(seed)
        self.cards = cards
        self.start_ms = start_ms
        self.rate = rate
        self.p_episode = EPISODES_PER_SEC / rate
        self.favs, self.mu, self.sigma = [], [], []
        for _ in range(cards):
            n_fav = 2 + self.int_below(4)
            self.favs.append([self.skewed_below(M) for _ in range(n_fav)])
            self.mu.append(2.3 + 1.4 * self.u())
            self.sigma.append(0.4 + 0.4 * self.u())
        # active episodes: dicts in start order
        self.episodes = []
        self.k = 0

    # --- draws -----------------------------------------------------------
    def u(self):
        return self.rng.random()

    def int_below(self, n):
        return int(math.floor(self.u() * n))

    def skewed_below(self, n):
        v = self.u()
        return int(math.floor(v * v * n))

    def pick_merchant(self):
        """A fraud episode's merchant: 70 % a compromised one."""
        if self.u() < P_COMPROMISED:
            return COMPROMISED[self.int_below(len(COMPROMISED))]
        return self.int_below(M)

    def normal(self):
        u1 = self.u()
        u2 = self.u()
        return math.sqrt(-2.0 * math.log(1.0 - u1)) * math.cos(2.0 * math.pi * u2)

    # --- events ----------------------------------------------------------
    def episode_event(self, e):
        kind = e["kind"]
        if kind == 0:
            merchant = e["merchant0"] if self.u() < 0.7 else (e["merchant0"] + 1) % M
            amount = cents(0.5 + 4.5 * self.u())
            gap = 2000 + self.int_below(6000)
        elif kind == 1:
            merchant = self.pick_merchant()
            amount = cents(math.exp(math.log(300.0) + 2.3 * self.u()))
            gap = 20000 + self.int_below(40000)
        else:
            merchant = self.pick_merchant()
            c = e["card"]
            x = math.exp(self.mu[c] + self.sigma[c] * self.normal())
            amount = cents(x * (1.0 + 2.0 * self.u()))
            gap = 5000 + self.int_below(15000)
        e["next_ms"] += gap
        if e["next_ms"] > e["end_ms"]:
            self.episodes.remove(e)
        return e["card"], merchant, amount, True

    def next_event(self):
        now = self.start_ms + (self.k * 1000) // self.rate
        self.k += 1
        due = None
        for e in self.episodes:  # smallest next_ms, ties -> earliest started
            if due is None or e["next_ms"] < due["next_ms"]:
                due = e
        if due is not None and due["next_ms"] <= now:
            t = due["next_ms"]
            card, merchant, amount, fraud = self.episode_event(due)
        elif self.u() < self.p_episode:
            e = {
                "card": FRAUD_MOD * self.int_below(self.cards // FRAUD_MOD) + FRAUD_REM,
                "kind": self.int_below(3),
                "merchant0": self.pick_merchant(),
            }
            e["end_ms"] = now + 120000 + self.int_below(360000)
            e["next_ms"] = now
            self.episodes.append(e)
            t = now
            card, merchant, amount, fraud = self.episode_event(e)
        else:
            t = now
            if self.u() < 0.3:
                card = self.int_below(self.cards // 20)
            else:
                card = self.int_below(self.cards)
            favs = self.favs[card]
            if self.u() < 0.9:
                merchant = favs[self.int_below(len(favs))]
            else:
                merchant = self.skewed_below(M)
            x = math.exp(self.mu[card] + self.sigma[card] * self.normal())
            if self.u() < 0.01:
                x = x * (5.0 + 15.0 * self.u())
            amount = cents(x)
            fraud = False
        if self.u() < 0.01:
            lag = self.int_below(3000)
        else:
            lag = self.int_below(20)
        ts = max(t - lag, self.start_ms)
        return {
            "card_id": "card-%06d" % card,
            "merchant": "m-%04d" % merchant,
            "amount": amount / 100.0,
            "ts": fmt_ts(ts),
            "is_fraud": fraud,
        }


def generate(events, seed=42, cards=100000, start="2026-11-21T00:00:00Z", rate=200):
    """Yield `events` event dicts."""
    g = Gen(seed, cards, parse_ts(start), rate)
    for _ in range(events):
        yield g.next_event()


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--events", type=int, default=10000)
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--cards", type=int, default=100000)
    ap.add_argument("--start", default="2026-11-21T00:00:00Z")
    ap.add_argument("--rate", type=int, default=200, help="events per simulated second")
    ap.add_argument("--merchant-table", action="store_true",
                    help="print the merchant table (JSONL records {key, value}) instead of events")
    a = ap.parse_args(argv)
    out = sys.stdout
    if a.merchant_table:
        for rec in merchant_table(parse_ts(a.start)):
            out.write(json.dumps(rec))
            out.write("\n")
        return
    for ev in generate(a.events, a.seed, a.cards, a.start, a.rate):
        out.write(json.dumps(ev))
        out.write("\n")


if __name__ == "__main__":
    main()

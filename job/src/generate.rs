//! `weir generate fraud`: synthetic card transactions for the fraud example.
//!
//! A port of `examples/fraud/generator.py` (its docstring specifies the
//! algorithm): most cards buy a few times an hour at favourite merchants;
//! fraud-prone cards (index % 67 == 13) go through short episodes of card
//! testing (bursts of small charges), sudden large amounts, or spending spread
//! over many merchants, 70 % of the time at compromised merchants (merchant
//! risk >= 0.9, see [`merchant_risk`]). The random source differs from Python's, so the events
//! are the same in distribution, not byte for byte.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const MERCHANTS: usize = 1000;
const FRAUD_MOD: usize = 67;
const FRAUD_REM: usize = 13;
const EPISODES_PER_SEC: f64 = 0.2;

#[derive(Debug, Clone, PartialEq)]
pub struct Transaction {
    pub card: usize,
    pub merchant: usize,
    pub cents: i64,
    pub ts_ms: i64,
    pub is_fraud: bool,
}

impl Transaction {
    pub fn to_json(&self) -> String {
        format!(
            r#"{{"card_id": "card-{:06}", "merchant": "m-{:04}", "amount": {}, "ts": "{}", "is_fraud": {}}}"#,
            self.card,
            self.merchant,
            self.cents as f64 / 100.0,
            fmt_ts(self.ts_ms),
            self.is_fraud
        )
    }
}

/// Merchant categories, for the merchant-risk table.
pub const CATEGORIES: [&str; 8] = [
    "grocery",
    "fuel",
    "restaurants",
    "travel",
    "electronics",
    "online",
    "gift-cards",
    "gaming",
];

/// A merchant's risk score in [0, 1), a fixed function of its index.
pub fn merchant_risk(i: usize) -> f64 {
    ((i * 7919 + 13) % 1000) as f64 / 1000.0
}

pub fn merchant_category(i: usize) -> &'static str {
    CATEGORIES[(i * 31 + 7) % 8]
}

/// Merchants fraud episodes favour: risk 0.9 and above.
fn compromised() -> &'static [usize] {
    static LIST: std::sync::OnceLock<Vec<usize>> = std::sync::OnceLock::new();
    LIST.get_or_init(|| {
        (0..MERCHANTS)
            .filter(|&i| merchant_risk(i) >= 0.9)
            .collect()
    })
}

/// The merchant-risk table as (key, JSON value) records, valid from `start_ms`.
pub fn merchant_table(start_ms: i64) -> Vec<(String, String)> {
    (0..MERCHANTS)
        .map(|i| {
            let key = format!("m-{i:04}");
            let value = format!(
                r#"{{"merchant": "{key}", "risk": {}, "category": "{}", "updated_at": "{}"}}"#,
                merchant_risk(i),
                merchant_category(i),
                fmt_ts(start_ms)
            );
            (key, value)
        })
        .collect()
}

pub fn fmt_ts(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|d| d.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string())
        .unwrap_or_default()
}

struct Episode {
    card: usize,
    kind: usize,
    merchant0: usize,
    next_ms: i64,
    end_ms: i64,
}

struct Card {
    favourites: Vec<usize>,
    mu: f64,
    sigma: f64,
}

pub struct FraudGenerator {
    rng: StdRng,
    cards: Vec<Card>,
    start_ms: i64,
    rate: u64,
    episodes: Vec<Episode>,
    k: u64,
}

fn cents(x: f64) -> i64 {
    ((x * 100.0 + 0.5).floor() as i64).max(1)
}

impl FraudGenerator {
    /// `rate` is events per simulated second; `cards` at least 67.
    pub fn new(seed: u64, cards: usize, start_ms: i64, rate: u64) -> Self {
        let mut rng = StdRng::seed_from_u64(seed);
        let cards = cards.max(FRAUD_MOD);
        let mut profiles = Vec::with_capacity(cards);
        for _ in 0..cards {
            let n_fav = 2 + below(&mut rng, 4);
            let favourites = (0..n_fav)
                .map(|_| skewed_below(&mut rng, MERCHANTS))
                .collect();
            let mu = 2.3 + 1.4 * rng.random::<f64>();
            let sigma = 0.4 + 0.4 * rng.random::<f64>();
            profiles.push(Card {
                favourites,
                mu,
                sigma,
            });
        }
        Self {
            rng,
            cards: profiles,
            start_ms,
            rate: rate.max(1),
            episodes: Vec::new(),
            k: 0,
        }
    }

    fn episode_event(&mut self, i: usize) -> (usize, usize, i64) {
        let rng = &mut self.rng;
        let e = &mut self.episodes[i];
        let (merchant, amount, gap) = match e.kind {
            0 => {
                let m = if rng.random::<f64>() < 0.7 {
                    e.merchant0
                } else {
                    (e.merchant0 + 1) % MERCHANTS
                };
                (
                    m,
                    cents(0.5 + 4.5 * rng.random::<f64>()),
                    2000 + below(rng, 6000),
                )
            }
            1 => (
                episode_merchant(rng),
                cents((300f64.ln() + 2.3 * rng.random::<f64>()).exp()),
                20000 + below(rng, 40000),
            ),
            _ => {
                let c = &self.cards[e.card];
                let x = (c.mu + c.sigma * normal(rng)).exp();
                (
                    episode_merchant(rng),
                    cents(x * (1.0 + 2.0 * rng.random::<f64>())),
                    5000 + below(rng, 15000),
                )
            }
        };
        let card = e.card;
        e.next_ms += gap as i64;
        if e.next_ms > e.end_ms {
            self.episodes.remove(i);
        }
        (card, merchant, amount)
    }

    pub fn next_event(&mut self) -> Transaction {
        let now = self.start_ms + (self.k * 1000 / self.rate) as i64;
        self.k += 1;
        let due = self
            .episodes
            .iter()
            .enumerate()
            .min_by_key(|(i, e)| (e.next_ms, *i))
            .map(|(i, e)| (i, e.next_ms));
        let (t, card, merchant, cents_, fraud) = match due {
            Some((i, next)) if next <= now => {
                let (c, m, a) = self.episode_event(i);
                (next, c, m, a, true)
            }
            _ if self.rng.random::<f64>() < EPISODES_PER_SEC / self.rate as f64 => {
                let n = self.cards.len();
                let e = Episode {
                    card: FRAUD_MOD * below(&mut self.rng, n / FRAUD_MOD) + FRAUD_REM,
                    kind: below(&mut self.rng, 3),
                    merchant0: episode_merchant(&mut self.rng),
                    end_ms: now + 120_000 + below(&mut self.rng, 360_000) as i64,
                    next_ms: now,
                };
                self.episodes.push(e);
                let (c, m, a) = self.episode_event(self.episodes.len() - 1);
                (now, c, m, a, true)
            }
            _ => {
                let n = self.cards.len();
                let card = if self.rng.random::<f64>() < 0.3 {
                    below(&mut self.rng, n / 20)
                } else {
                    below(&mut self.rng, n)
                };
                let rng = &mut self.rng;
                let profile = &self.cards[card];
                let merchant = if rng.random::<f64>() < 0.9 {
                    profile.favourites[below(rng, profile.favourites.len())]
                } else {
                    skewed_below(rng, MERCHANTS)
                };
                let mut x = (profile.mu + profile.sigma * normal(rng)).exp();
                if rng.random::<f64>() < 0.01 {
                    x *= 5.0 + 15.0 * rng.random::<f64>();
                }
                (now, card, merchant, cents(x), false)
            }
        };
        let lag = if self.rng.random::<f64>() < 0.01 {
            below(&mut self.rng, 3000)
        } else {
            below(&mut self.rng, 20)
        } as i64;
        Transaction {
            card,
            merchant,
            cents: cents_,
            ts_ms: (t - lag).max(self.start_ms),
            is_fraud: fraud,
        }
    }
}

/// A merchant for a fraud episode: a compromised one 70 % of the time.
fn episode_merchant(rng: &mut StdRng) -> usize {
    if rng.random::<f64>() < 0.7 {
        let c = compromised();
        c[below(rng, c.len())]
    } else {
        below(rng, MERCHANTS)
    }
}

fn below(rng: &mut StdRng, n: usize) -> usize {
    ((rng.random::<f64>() * n as f64).floor() as usize).min(n.saturating_sub(1))
}

fn skewed_below(rng: &mut StdRng, n: usize) -> usize {
    let v = rng.random::<f64>();
    ((v * v * n as f64).floor() as usize).min(n - 1)
}

fn normal(rng: &mut StdRng) -> f64 {
    let u1 = rng.random::<f64>();
    let u2 = rng.random::<f64>();
    (-2.0 * (1.0 - u1).ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deterministic_and_plausible() {
        let mut a = FraudGenerator::new(7, 100_000, 0, 200);
        let mut b = FraudGenerator::new(7, 100_000, 0, 200);
        let events: Vec<_> = (0..100_000).map(|_| a.next_event()).collect();
        assert_eq!(
            events,
            (0..100_000).map(|_| b.next_event()).collect::<Vec<_>>()
        );
        // The Python reference makes about 3 % fraud events with these settings.
        let fraud = events.iter().filter(|e| e.is_fraud).count();
        assert!(
            (1_000..6_000).contains(&fraud),
            "fraud share off: {fraud} of 100000"
        );
        assert!(events.iter().all(|e| e.cents >= 1 && e.ts_ms >= 0));
        let json = events[0].to_json();
        let v: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert!(v["card_id"].as_str().unwrap().starts_with("card-"));
    }
}

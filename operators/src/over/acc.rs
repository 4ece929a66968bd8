//! The accumulators: a call's argument value (`Val`) and its sliding accumulator over its
//! frame (`Acc`).

use std::collections::VecDeque;

use hashbrown::HashMap;
use weir_sql::OverFunction;

use super::OverCallSpec;

/// An aggregate argument as the accumulators see it.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Val {
    Null,
    I(i64),
    F(f64),
    /// A DISTINCT argument, row-encoded.
    B(Box<[u8]>),
}

impl Val {
    pub(super) fn f64(&self) -> f64 {
        match self {
            Val::I(v) => *v as f64,
            Val::F(v) => *v,
            Val::Null | Val::B(_) => 0.0,
        }
    }

    /// `self` ranks at or before `other` for max (`max`) or min (`!max`).
    fn dominated_by(&self, other: &Val, max: bool) -> bool {
        let ord = match (self, other) {
            (Val::I(a), Val::I(b)) => a.cmp(b),
            (a, b) => a.f64().total_cmp(&b.f64()),
        };
        if max { ord.is_le() } else { ord.is_ge() }
    }

    pub(super) fn size(&self) -> usize {
        16 + match self {
            Val::B(b) => b.len(),
            _ => 0,
        }
    }
}

/// Neumaier's compensated sum, so adding and retracting floats for hours
/// does not drift.
#[derive(Default, Clone, Copy)]
struct KahanSum {
    sum: f64,
    comp: f64,
}

impl KahanSum {
    fn add(&mut self, x: f64) {
        let t = self.sum + x;
        if self.sum.abs() >= x.abs() {
            self.comp += (self.sum - t) + x;
        } else {
            self.comp += (x - t) + self.sum;
        }
        self.sum = t;
    }

    fn value(&self) -> f64 {
        self.sum + self.comp
    }
}

enum AccState {
    Count {
        n: i64,
    },
    CountDistinct {
        seen: HashMap<Box<[u8]>, u32>,
    },
    Sum {
        n: i64,
        int: i128,
        float: KahanSum,
    },
    /// Welford's running mean and sum of squared deviations.
    Moments {
        n: i64,
        mean: f64,
        m2: f64,
    },
    /// Candidates for the extreme, by absolute row index: each dominates the
    /// ones after it, so the front is the answer.
    Extreme {
        max: bool,
        deque: VecDeque<(u64, Val)>,
    },
}

/// A call's accumulator over the frame `[start, end)` of the key's history
/// (absolute row indices).
pub(super) struct Acc {
    pub(super) start: u64,
    pub(super) end: u64,
    state: AccState,
}

impl Acc {
    pub(super) fn new(call: &OverCallSpec, at: u64) -> Self {
        let state = match call.function {
            OverFunction::Count if call.distinct => AccState::CountDistinct {
                seen: HashMap::new(),
            },
            OverFunction::Count => AccState::Count { n: 0 },
            OverFunction::Sum | OverFunction::Avg => AccState::Sum {
                n: 0,
                int: 0,
                float: KahanSum::default(),
            },
            OverFunction::Min | OverFunction::Max => AccState::Extreme {
                max: call.function == OverFunction::Max,
                deque: VecDeque::new(),
            },
            OverFunction::StddevSamp
            | OverFunction::StddevPop
            | OverFunction::VarSamp
            | OverFunction::VarPop => AccState::Moments {
                n: 0,
                mean: 0.0,
                m2: 0.0,
            },
        };
        Self {
            start: at,
            end: at,
            state,
        }
    }

    pub(super) fn add(&mut self, index: u64, v: &Val) {
        self.end = index + 1;
        if *v == Val::Null {
            return;
        }
        match &mut self.state {
            AccState::Count { n } => *n += 1,
            AccState::CountDistinct { seen } => {
                if let Val::B(b) = v {
                    *seen.entry(b.clone()).or_insert(0) += 1;
                }
            }
            AccState::Sum { n, int, float } => {
                *n += 1;
                match v {
                    Val::I(x) => *int += *x as i128,
                    v => float.add(v.f64()),
                }
            }
            AccState::Moments { n, mean, m2 } => {
                let x = v.f64();
                *n += 1;
                let d = x - *mean;
                *mean += d / *n as f64;
                *m2 += d * (x - *mean);
            }
            AccState::Extreme { max, deque } => {
                while deque.back().is_some_and(|(_, b)| b.dominated_by(v, *max)) {
                    deque.pop_back();
                }
                deque.push_back((index, v.clone()));
            }
        }
    }

    /// Retracts the frame's first row, whose value is `v`.
    pub(super) fn remove_first(&mut self, v: &Val) {
        let index = self.start;
        self.start += 1;
        if *v == Val::Null {
            return;
        }
        match &mut self.state {
            AccState::Count { n } => *n -= 1,
            AccState::CountDistinct { seen } => {
                if let Val::B(b) = v
                    && let Some(c) = seen.get_mut(b)
                {
                    *c -= 1;
                    if *c == 0 {
                        seen.remove(b);
                    }
                }
            }
            AccState::Sum { n, int, float } => {
                *n -= 1;
                if *n == 0 {
                    *int = 0;
                    *float = KahanSum::default();
                } else {
                    match v {
                        Val::I(x) => *int -= *x as i128,
                        v => float.add(-v.f64()),
                    }
                }
            }
            AccState::Moments { n, mean, m2 } => {
                if *n <= 1 {
                    (*n, *mean, *m2) = (0, 0.0, 0.0);
                } else {
                    let x = v.f64();
                    let d = x - *mean;
                    *n -= 1;
                    *mean -= d / *n as f64;
                    *m2 -= d * (x - *mean);
                    // One value left has no spread; do not let rounding say otherwise.
                    if *m2 < 0.0 || *n == 1 {
                        *m2 = 0.0;
                    }
                }
            }
            AccState::Extreme { deque, .. } => {
                if deque.front().is_some_and(|(i, _)| *i == index) {
                    deque.pop_front();
                }
            }
        }
    }

    pub(super) fn value(&self, function: OverFunction) -> Val {
        match &self.state {
            AccState::Count { n } => Val::I(*n),
            AccState::CountDistinct { seen } => Val::I(seen.len() as i64),
            AccState::Sum { n: 0, .. } => Val::Null,
            AccState::Sum { n, int, float } => match function {
                OverFunction::Avg => Val::F((*int as f64 + float.value()) / *n as f64),
                _ if *int != 0 || float.value() == 0.0 => {
                    Val::I((*int).clamp(i64::MIN as i128, i64::MAX as i128) as i64)
                }
                _ => Val::F(float.value()),
            },
            AccState::Moments { n, m2, .. } => {
                let n = *n as f64;
                let var = match function {
                    OverFunction::VarSamp | OverFunction::StddevSamp if n < 2.0 => {
                        return Val::Null;
                    }
                    OverFunction::VarSamp | OverFunction::StddevSamp => m2 / (n - 1.0),
                    _ if n < 1.0 => return Val::Null,
                    _ => m2 / n,
                };
                match function {
                    OverFunction::StddevSamp | OverFunction::StddevPop => Val::F(var.sqrt()),
                    _ => Val::F(var),
                }
            }
            AccState::Extreme { deque, .. } => {
                deque.front().map(|(_, v)| v.clone()).unwrap_or(Val::Null)
            }
        }
    }
}

//! Which windows an event time belongs to. Windows are aligned to the epoch
//! (plus an optional offset), as in Flink. A window is named by its end: ends
//! are unique among the windows of one TVF (CUMULATE windows share starts).
//!
//! The arithmetic is checked: an event time so near either end of the i64
//! milliseconds that one of its windows would start or end outside them has
//! no windows (`None`); the operator sets such a row aside with its own
//! reason ([`crate::operator::OUTSIDE_WINDOW_RANGE`]).

use weir_sql::WindowKind;

#[derive(Debug, Clone, Copy)]
pub struct Assigner {
    /// Distance between consecutive window starts (HOP's slide; the size for
    /// TUMBLE and CUMULATE).
    slide: i64,
    size: i64,
    /// CUMULATE's step: windows of one start end every `step`.
    step: Option<i64>,
    offset: i64,
}

impl Assigner {
    pub fn new(kind: WindowKind, offset_ms: i64) -> Self {
        let (slide, size, step) = match kind {
            WindowKind::Tumble { size_ms } => (size_ms, size_ms, None),
            WindowKind::Hop { slide_ms, size_ms } => (slide_ms, size_ms, None),
            WindowKind::Cumulate { step_ms, size_ms } => (size_ms, size_ms, Some(step_ms)),
            // Sessions are not aligned: their operator never builds an assigner.
            WindowKind::Session { .. } => unreachable!("SESSION windows have no assigner"),
        };
        Self {
            slide,
            size,
            step,
            offset: offset_ms,
        }
    }

    /// Start of the latest window containing `ts`, if it is representable.
    fn last_start(&self, ts: i64) -> Option<i64> {
        // `ts - offset` in i128: both may be anywhere in i64.
        let into = (i128::from(ts) - i128::from(self.offset)).rem_euclid(i128::from(self.slide));
        ts.checked_sub(into as i64)
    }

    /// The start of the window ending at `end`, if it is representable.
    pub fn start_of(&self, end: i64) -> Option<i64> {
        match self.step {
            None => end.checked_sub(self.size),
            Some(_) => self.last_start(end.checked_sub(1)?),
        }
    }

    /// The end of the last window containing `ts` to fire; `None` if a
    /// window containing `ts` cannot be represented ([`Assigner::ends`]).
    pub fn last_end(&self, ts: i64) -> Option<i64> {
        Some(self.bounds(ts)?.1)
    }

    /// The start of the latest window containing `ts` and its end, checking
    /// that every window containing `ts` can be represented: that window's
    /// end, and the start of the earliest one.
    fn bounds(&self, ts: i64) -> Option<(i64, i64)> {
        let last = self.last_start(ts)?;
        let end = last.checked_add(self.size)?;
        if self.step.is_none() {
            // Earlier windows start a slide apart while they still end after
            // ts: k slides back for k * slide <= last - ts + size - 1.
            let (slide, size) = (i128::from(self.slide), i128::from(self.size));
            let back = (i128::from(last) - i128::from(ts) + size - 1).max(0) / slide * slide;
            i64::try_from(i128::from(last) - back).ok()?;
        }
        Some((last, end))
    }

    /// Ends of every window containing `ts`, latest first; `None` if any of
    /// those windows starts or ends outside the i64 milliseconds.
    pub fn ends(&self, ts: i64) -> Option<impl Iterator<Item = i64> + use<>> {
        let (last, end) = self.bounds(ts)?;
        let stride = self.step.unwrap_or(self.slide);
        // CUMULATE: one start, ends from the full window down to the first
        // step past ts; otherwise ends down to the first past ts.
        let first = match self.step {
            Some(step) => {
                let (last, step) = (i128::from(last), i128::from(step));
                last + ((i128::from(ts) - last) / step + 1) * step
            }
            None => i128::from(ts) + 1,
        };
        Some(
            std::iter::successors(Some(end), move |e| e.checked_sub(stride))
                .take_while(move |e| i128::from(*e) >= first),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tumble() {
        let a = Assigner::new(WindowKind::Tumble { size_ms: 60_000 }, 0);
        assert_eq!(a.ends(0).unwrap().collect::<Vec<_>>(), vec![60_000]);
        assert_eq!(a.ends(59_999).unwrap().collect::<Vec<_>>(), vec![60_000]);
        assert_eq!(a.ends(60_000).unwrap().collect::<Vec<_>>(), vec![120_000]);
        assert_eq!(a.ends(-1).unwrap().collect::<Vec<_>>(), vec![0]);
        assert_eq!(a.start_of(120_000), Some(60_000));
    }

    #[test]
    fn hop() {
        let a = Assigner::new(
            WindowKind::Hop {
                slide_ms: 60_000,
                size_ms: 180_000,
            },
            0,
        );
        assert_eq!(
            a.ends(125_000).unwrap().collect::<Vec<_>>(),
            vec![300_000, 240_000, 180_000]
        );
        assert_eq!(
            a.ends(120_000).unwrap().collect::<Vec<_>>(),
            vec![300_000, 240_000, 180_000]
        );
        assert_eq!(
            a.ends(119_999).unwrap().collect::<Vec<_>>(),
            vec![240_000, 180_000, 120_000]
        );
        assert_eq!(a.start_of(240_000), Some(60_000));
        assert_eq!(a.last_end(119_999), Some(240_000));
    }

    #[test]
    fn cumulate() {
        let a = Assigner::new(
            WindowKind::Cumulate {
                step_ms: 60_000,
                size_ms: 240_000,
            },
            0,
        );
        // 2.5 min into [0, 4 min): in the windows ending at 3 and 4 min.
        assert_eq!(
            a.ends(150_000).unwrap().collect::<Vec<_>>(),
            vec![240_000, 180_000]
        );
        assert_eq!(
            a.ends(0).unwrap().collect::<Vec<_>>(),
            vec![240_000, 180_000, 120_000, 60_000]
        );
        assert_eq!(a.ends(239_999).unwrap().collect::<Vec<_>>(), vec![240_000]);
        assert_eq!(
            a.ends(240_000).unwrap().collect::<Vec<_>>(),
            vec![480_000, 420_000, 360_000, 300_000]
        );
        assert_eq!(a.start_of(180_000), Some(0));
        assert_eq!(a.start_of(240_000), Some(0));
        assert_eq!(a.start_of(300_000), Some(240_000));
        assert_eq!(a.last_end(150_000), Some(240_000));
    }

    /// The windows containing `ts`, by exact (i128) arithmetic: their
    /// (start, end), latest end first; `None` if any cannot be represented
    /// in i64 milliseconds.
    fn reference(kind: WindowKind, offset: i64, ts: i64) -> Option<Vec<(i64, i64)>> {
        let (ts, offset) = (ts as i128, offset as i128);
        let mut out: Vec<(i128, i128)> = Vec::new();
        match kind {
            WindowKind::Tumble { size_ms } => {
                let size = size_ms as i128;
                let start = ts - (ts - offset).rem_euclid(size);
                out.push((start, start + size));
            }
            WindowKind::Hop { slide_ms, size_ms } => {
                let (slide, size) = (slide_ms as i128, size_ms as i128);
                let mut start = ts - (ts - offset).rem_euclid(slide);
                while start + size > ts {
                    out.push((start, start + size));
                    start -= slide;
                }
            }
            WindowKind::Cumulate { step_ms, size_ms } => {
                let (step, size) = (step_ms as i128, size_ms as i128);
                let start = ts - (ts - offset).rem_euclid(size);
                let mut end = start + size;
                while end > ts {
                    out.push((start, end));
                    end -= step;
                }
            }
            WindowKind::Session { .. } => unreachable!(),
        }
        let fits = |v: i128| i64::try_from(v).is_ok();
        out.iter()
            .all(|(s, e)| fits(*s) && fits(*e))
            .then(|| out.iter().map(|(s, e)| (*s as i64, *e as i64)).collect())
    }

    /// What the assigner says for `ts`: each window as (start, end).
    fn assigned(a: &Assigner, ts: i64) -> Option<Vec<(i64, i64)>> {
        let ends: Vec<i64> = a.ends(ts)?.collect();
        ends.into_iter()
            .map(|e| Some((a.start_of(e)?, e)))
            .collect()
    }

    fn kinds() -> Vec<WindowKind> {
        vec![
            WindowKind::Tumble { size_ms: 60_000 },
            WindowKind::Tumble { size_ms: 7 },
            WindowKind::Hop {
                slide_ms: 60_000,
                size_ms: 180_000,
            },
            WindowKind::Hop {
                slide_ms: 3,
                size_ms: 10,
            },
            WindowKind::Cumulate {
                step_ms: 60_000,
                size_ms: 240_000,
            },
            WindowKind::Cumulate {
                step_ms: 2,
                size_ms: 6,
            },
        ]
    }

    const EDGES: [i64; 8] = [
        i64::MIN,
        i64::MIN + 1,
        i64::MIN + 59_999,
        i64::MAX,
        i64::MAX - 1,
        i64::MAX - 179_999,
        -1,
        0,
    ];

    #[test]
    fn windows_at_the_ends_of_time_are_exact_or_refused() {
        for kind in kinds() {
            for offset in [0, 1, -1, 25_000, -25_000, i64::MAX, i64::MIN] {
                let a = Assigner::new(kind, offset);
                for ts in EDGES {
                    let want = reference(kind, offset, ts);
                    assert_eq!(assigned(&a, ts), want, "{kind:?} offset {offset} at {ts}");
                    assert_eq!(
                        a.last_end(ts),
                        want.as_ref().map(|w| w[0].1),
                        "last_end: {kind:?} offset {offset} at {ts}"
                    );
                }
            }
        }
    }

    proptest::proptest! {
        #[test]
        fn windows_match_exact_arithmetic(
            k in 0usize..6,
            offset in proptest::prelude::any::<i64>(),
            ts in proptest::prelude::any::<i64>(),
            near_edge in proptest::prelude::any::<bool>(),
        ) {
            let kind = kinds()[k];
            // Half the cases within a day of either end.
            let ts = if near_edge {
                if ts < 0 { i64::MIN + (ts % 86_400_000).abs() } else { i64::MAX - ts % 86_400_000 }
            } else {
                ts
            };
            let a = Assigner::new(kind, offset);
            let want = reference(kind, offset, ts);
            proptest::prop_assert_eq!(assigned(&a, ts), want.clone());
            proptest::prop_assert_eq!(a.last_end(ts), want.map(|w| w[0].1));
        }
    }
}

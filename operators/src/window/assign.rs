//! Which windows an event time belongs to. Windows are aligned to the epoch
//! (plus an optional offset), as in Flink. A window is named by its end: ends
//! are unique among the windows of one TVF (CUMULATE windows share starts).

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

    /// Start of the latest window containing `ts`.
    fn last_start(&self, ts: i64) -> i64 {
        ts - (ts - self.offset).rem_euclid(self.slide)
    }

    /// The start of the window ending at `end`.
    pub fn start_of(&self, end: i64) -> i64 {
        match self.step {
            None => end - self.size,
            Some(_) => self.last_start(end - 1),
        }
    }

    /// The end of the last window containing `ts` to fire.
    pub fn last_end(&self, ts: i64) -> i64 {
        self.last_start(ts) + self.size
    }

    /// Ends of every window containing `ts`, latest first.
    pub fn ends(&self, ts: i64) -> impl Iterator<Item = i64> {
        let last = self.last_start(ts);
        let size = self.size;
        let slide = self.slide;
        let (stride, first) = match self.step {
            // One start: ends from the full window down to the first step past ts.
            Some(step) => (step, last + ((ts - last) / step + 1) * step),
            None => (slide, i64::MIN),
        };
        (0..)
            .map(move |k| last + size - k * stride)
            .take_while(move |end| match self.step {
                Some(_) => *end >= first,
                None => *end > ts,
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tumble() {
        let a = Assigner::new(WindowKind::Tumble { size_ms: 60_000 }, 0);
        assert_eq!(a.ends(0).collect::<Vec<_>>(), vec![60_000]);
        assert_eq!(a.ends(59_999).collect::<Vec<_>>(), vec![60_000]);
        assert_eq!(a.ends(60_000).collect::<Vec<_>>(), vec![120_000]);
        assert_eq!(a.ends(-1).collect::<Vec<_>>(), vec![0]);
        assert_eq!(a.start_of(120_000), 60_000);
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
            a.ends(125_000).collect::<Vec<_>>(),
            vec![300_000, 240_000, 180_000]
        );
        assert_eq!(
            a.ends(120_000).collect::<Vec<_>>(),
            vec![300_000, 240_000, 180_000]
        );
        assert_eq!(
            a.ends(119_999).collect::<Vec<_>>(),
            vec![240_000, 180_000, 120_000]
        );
        assert_eq!(a.start_of(240_000), 60_000);
        assert_eq!(a.last_end(119_999), 240_000);
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
        assert_eq!(a.ends(150_000).collect::<Vec<_>>(), vec![240_000, 180_000]);
        assert_eq!(
            a.ends(0).collect::<Vec<_>>(),
            vec![240_000, 180_000, 120_000, 60_000]
        );
        assert_eq!(a.ends(239_999).collect::<Vec<_>>(), vec![240_000]);
        assert_eq!(
            a.ends(240_000).collect::<Vec<_>>(),
            vec![480_000, 420_000, 360_000, 300_000]
        );
        assert_eq!(a.start_of(180_000), 0);
        assert_eq!(a.start_of(240_000), 0);
        assert_eq!(a.start_of(300_000), 240_000);
        assert_eq!(a.last_end(150_000), 240_000);
    }
}

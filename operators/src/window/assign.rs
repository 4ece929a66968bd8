//! Which windows an event time belongs to. Windows are aligned to the epoch
//! (plus an optional offset), as in Flink.

use weir_sql::WindowKind;

#[derive(Debug, Clone, Copy)]
pub struct Assigner {
    /// Distance between consecutive window starts (the size, for TUMBLE).
    slide: i64,
    size: i64,
    offset: i64,
}

impl Assigner {
    pub fn new(kind: WindowKind, offset_ms: i64) -> Self {
        let (slide, size) = match kind {
            WindowKind::Tumble { size_ms } => (size_ms, size_ms),
            WindowKind::Hop { slide_ms, size_ms } => (slide_ms, size_ms),
        };
        Self {
            slide,
            size,
            offset: offset_ms,
        }
    }

    pub fn size(&self) -> i64 {
        self.size
    }

    /// Start of the latest window containing `ts`.
    pub fn last_start(&self, ts: i64) -> i64 {
        ts - (ts - self.offset).rem_euclid(self.slide)
    }

    /// Starts of every window containing `ts`, latest first.
    pub fn starts(&self, ts: i64) -> impl Iterator<Item = i64> {
        let last = self.last_start(ts);
        let size = self.size;
        let slide = self.slide;
        (0..)
            .map(move |k| last - k * slide)
            .take_while(move |start| *start > ts - size)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tumble() {
        let a = Assigner::new(WindowKind::Tumble { size_ms: 60_000 }, 0);
        assert_eq!(a.starts(0).collect::<Vec<_>>(), vec![0]);
        assert_eq!(a.starts(59_999).collect::<Vec<_>>(), vec![0]);
        assert_eq!(a.starts(60_000).collect::<Vec<_>>(), vec![60_000]);
        assert_eq!(a.starts(-1).collect::<Vec<_>>(), vec![-60_000]);
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
            a.starts(125_000).collect::<Vec<_>>(),
            vec![120_000, 60_000, 0]
        );
        assert_eq!(
            a.starts(120_000).collect::<Vec<_>>(),
            vec![120_000, 60_000, 0]
        );
        assert_eq!(
            a.starts(119_999).collect::<Vec<_>>(),
            vec![60_000, 0, -60_000]
        );
    }
}

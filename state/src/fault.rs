//! Fault injection for crash tests: `WEIR_FAULT=<point>:<n>` aborts the
//! process (no destructors, no flushes: as `kill -9` would) the `n`th time the
//! named point is reached. Unset, a point costs one relaxed atomic load.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};

struct Fault {
    point: String,
    at: u64,
    hits: AtomicU64,
}

fn configured() -> Option<&'static Fault> {
    static FAULT: OnceLock<Option<Fault>> = OnceLock::new();
    FAULT
        .get_or_init(|| {
            let spec = std::env::var("WEIR_FAULT").ok()?;
            let (point, at) = spec.rsplit_once(':')?;
            Some(Fault {
                point: point.to_owned(),
                at: at.parse().ok()?,
                hits: AtomicU64::new(0),
            })
        })
        .as_ref()
}

/// Marks a point where a crash is worth testing.
pub fn point(name: &str) {
    if let Some(f) = configured()
        && f.point == name
        && f.hits.fetch_add(1, Ordering::Relaxed) + 1 == f.at
    {
        eprintln!("weir: injected fault at '{name}' (hit {})", f.at);
        std::process::abort();
    }
}

//! A partition key's sessions and, per session, its groups: what the operator holds in memory.

use std::collections::BTreeMap;

use hashbrown::HashSet;

use crate::ids::RowId;

pub(super) struct Group {
    /// Row-encoded accumulator states to merge (one, unless sessions merged).
    pub(super) states: Vec<Box<[u8]>>,
    /// Per aggregate, the encoded argument values a DISTINCT aggregate saw.
    pub(super) seen: Vec<HashSet<Box<[u8]>>>,
    /// What was last emitted for this group under the session's current
    /// bounds: the identity its delete would carry and the encoded row.
    pub(super) emitted: Option<(RowId, Box<[u8]>)>,
    /// Changed since last emitted.
    pub(super) changed: bool,
}

pub(super) struct Session {
    /// Identifies the session within a run of rows (not stored).
    pub(super) id: u64,
    pub(super) start: i64,
    pub(super) end: i64,
    pub(super) groups: BTreeMap<Box<[u8]>, Group>,
    /// Rows emitted under bounds that no longer hold, to delete.
    pub(super) retract: Vec<(RowId, Box<[u8]>)>,
}

impl Session {
    /// Moves the session to new bounds: what it emitted under the old ones
    /// is to be deleted, and every group is emitted anew.
    pub(super) fn rebound(&mut self, start: i64, end: i64) {
        if (start, end) == (self.start, self.end) {
            return;
        }
        for g in self.groups.values_mut() {
            if let Some(e) = g.emitted.take() {
                self.retract.push(e);
            }
            g.changed = true;
        }
        self.start = start;
        self.end = end;
    }

    /// Takes in the groups and retractions of `other`, a session merged into
    /// this one.
    pub(super) fn absorb(&mut self, other: Session) {
        self.retract.extend(other.retract);
        for (gk, mut g) in other.groups {
            if let Some(e) = g.emitted.take() {
                self.retract.push(e);
            }
            match self.groups.get_mut(&gk) {
                None => {
                    g.changed = true;
                    self.groups.insert(gk, g);
                }
                Some(mine) => {
                    mine.states.extend(g.states);
                    for (a, b) in mine.seen.iter_mut().zip(g.seen) {
                        a.extend(b);
                    }
                    mine.changed = true;
                }
            }
        }
    }
}

#[derive(Default)]
pub(super) struct Key {
    /// Disjoint, by start.
    pub(super) sessions: Vec<Session>,
    /// When the key next needs the watermark's attention (its entry in `due`).
    pub(super) due: Option<i64>,
}

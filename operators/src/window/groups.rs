//! A pane's group keys and DISTINCT sightings, held without an allocation per
//! group or per sighting: keys live back to back in one buffer, indexed by a
//! hash table of group numbers (as DataFusion's own group-by does), and a
//! sighting is a (group, value number) pair in a set of `u64`s.

use std::hash::BuildHasher;

use hashbrown::{DefaultHashBuilder, HashSet, HashTable};

/// Byte strings numbered in order of first sight.
#[derive(Default)]
pub struct Interner {
    bytes: Vec<u8>,
    /// `ends[i]`: where string i ends in `bytes`.
    ends: Vec<usize>,
    table: HashTable<u32>,
    hasher: DefaultHashBuilder,
}

impl Interner {
    pub fn len(&self) -> usize {
        self.ends.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }

    pub fn get(&self, i: usize) -> &[u8] {
        let start = if i == 0 { 0 } else { self.ends[i - 1] };
        &self.bytes[start..self.ends[i]]
    }

    pub fn iter(&self) -> impl Iterator<Item = &[u8]> {
        (0..self.len()).map(|i| self.get(i))
    }

    /// The number of `key`, and whether it is new.
    pub fn intern(&mut self, key: &[u8]) -> (u32, bool) {
        let hash = self.hasher.hash_one(key);
        let Self {
            bytes,
            ends,
            table,
            hasher,
        } = self;
        let get = |i: u32| {
            let i = i as usize;
            let start = if i == 0 { 0 } else { ends[i - 1] };
            &bytes[start..ends[i]]
        };
        if let Some(&i) = table.find(hash, |&i| get(i) == key) {
            return (i, false);
        }
        let i = ends.len() as u32;
        table.insert_unique(hash, i, |&j| hasher.hash_one(get(j)));
        bytes.extend_from_slice(key);
        ends.push(bytes.len());
        (i, true)
    }

    /// Heap bytes held.
    pub fn memory(&self) -> usize {
        self.bytes.capacity() + self.ends.capacity() * 8 + self.table.capacity() * 5
    }
}

/// The (group, value) pairs a DISTINCT aggregate has seen.
#[derive(Default)]
pub struct Seen {
    pub values: Interner,
    pairs: HashSet<u64>,
    /// The pairs in order of first sight (`pairs` is for lookups).
    pub order: Vec<u64>,
}

pub fn pair(group: u32, value: u32) -> u64 {
    (u64::from(group) << 32) | u64::from(value)
}

pub fn unpair(p: u64) -> (u32, u32) {
    ((p >> 32) as u32, p as u32)
}

impl Seen {
    /// Records that `group` saw `value`; false if it had before.
    pub fn insert(&mut self, group: u32, value: &[u8]) -> bool {
        let (v, _) = self.values.intern(value);
        let p = pair(group, v);
        if self.pairs.insert(p) {
            self.order.push(p);
            true
        } else {
            false
        }
    }

    pub fn memory(&self) -> usize {
        self.values.memory() + self.pairs.capacity() * 9 + self.order.capacity() * 8
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interner_numbers_in_order_of_first_sight() {
        let mut i = Interner::default();
        let words: Vec<Vec<u8>> = (0..5000u32)
            .map(|n| format!("key-{}", n % 1234).into_bytes())
            .collect();
        for w in &words {
            i.intern(w);
        }
        assert_eq!(i.len(), 1234);
        for n in 0..1234u32 {
            assert_eq!(i.get(n as usize), format!("key-{n}").as_bytes());
            assert_eq!(i.intern(format!("key-{n}").as_bytes()), (n, false));
        }
        assert_eq!(i.intern(b""), (1234, true));
        assert_eq!(i.get(1234), b"");
        assert_eq!(i.iter().count(), 1235);
    }

    #[test]
    fn seen_reports_first_sightings_only() {
        let mut s = Seen::default();
        assert!(s.insert(3, b"a"));
        assert!(s.insert(4, b"a"));
        assert!(!s.insert(3, b"a"));
        assert!(s.insert(3, b"b"));
        assert_eq!(s.order.len(), 3);
        let seen: Vec<(u32, &[u8])> = s
            .order
            .iter()
            .map(|&p| {
                let (g, v) = unpair(p);
                (g, s.values.get(v as usize))
            })
            .collect();
        assert_eq!(seen, vec![(3, &b"a"[..]), (4, b"a"), (3, b"b")]);
    }
}

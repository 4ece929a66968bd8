//! Group keys and DISTINCT sightings, held without an allocation per group or
//! per sighting. The operator's keys live back to back in one buffer, indexed
//! by a hash table of key numbers (as DataFusion's own group-by does), once
//! however many panes hold them; a pane maps key numbers to its groups; a
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

    pub fn get(&self, i: usize) -> &[u8] {
        let start = if i == 0 { 0 } else { self.ends[i - 1] };
        &self.bytes[start..self.ends[i]]
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

/// Byte strings the window operator's panes share, each held once however
/// many panes hold it (a row of HOP(1 min, 10 min) is in ten), and numbered:
/// the group keys (a pane finds a row's group by the key's number,
/// [`Groups`]), and the values of each DISTINCT aggregate (a pane's sightings
/// are (group, value number) pairs, [`Seen`]). A row's key and values are
/// hashed and compared once, not once per pane.
///
/// Numbers are never reused between sweeps; a sweep ([`Dict::sweep`])
/// drops the keys no pane holds any more and renumbers the rest.
#[derive(Default)]
pub struct Dict {
    keys: Interner,
    /// Keys kept by the last sweep: the next is due once there are twice as many.
    kept: usize,
}

/// No sweep before the dictionary holds this many keys.
const SWEEP_MIN_KEYS: usize = 4096;

impl Dict {
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn intern(&mut self, key: &[u8]) -> u32 {
        self.keys.intern(key).0
    }

    pub fn get(&self, number: u32) -> &[u8] {
        self.keys.get(number as usize)
    }

    /// Whether enough keys were added since the last sweep to sweep again
    /// (each sweep costs a pass over every pane's groups, so they are spaced
    /// by the dictionary doubling).
    pub fn sweep_due(&self) -> bool {
        self.keys.len() >= (2 * self.kept).max(SWEEP_MIN_KEYS)
    }

    /// Keeps the keys `live` marks (by number). Returns the renumbering,
    /// `new[old]` (`u32::MAX` for a key dropped), or None when few enough are
    /// dead that the keys stay as they are.
    pub fn sweep(&mut self, live: &[bool]) -> Option<Vec<u32>> {
        debug_assert_eq!(live.len(), self.keys.len());
        let kept = live.iter().filter(|&&l| l).count();
        if kept * 4 >= self.keys.len() * 3 {
            // Under a quarter dead: not worth renumbering every pane.
            self.kept = self.keys.len();
            return None;
        }
        let mut keys = Interner::default();
        let new = live
            .iter()
            .enumerate()
            .map(|(old, &l)| {
                if l {
                    keys.intern(self.keys.get(old)).0
                } else {
                    u32::MAX
                }
            })
            .collect();
        self.keys = keys;
        self.kept = kept;
        Some(new)
    }

    /// Heap bytes held.
    pub fn memory(&self) -> usize {
        self.keys.memory()
    }
}

/// A pane's groups: per group, its key's number in the [`Dict`], and the
/// group of each key number, looked up without touching the key's bytes.
#[derive(Default)]
pub struct Groups {
    /// `keys[g]`: group g's key number.
    keys: Vec<u32>,
    /// (key number, group) pairs.
    table: HashTable<(u32, u32)>,
}

/// A key number's hash: a folded multiply (the product's high half xored
/// into its low half), so that the table's buckets (low bits) and tags (high
/// bits) both vary even among numbers that share their low bits, as a pane's
/// may (a multiply alone keeps multiples of 64 on one bucket in 64).
fn spread(key: u32) -> u64 {
    let m = u128::from(key) * 0x9E37_79B9_7F4A_7C15;
    (m as u64) ^ ((m >> 64) as u64)
}

impl Groups {
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Key numbers, by group.
    pub fn keys(&self) -> &[u32] {
        &self.keys
    }

    /// The group of key number `key`, and whether it is new.
    pub fn group(&mut self, key: u32) -> (u32, bool) {
        let hash = spread(key);
        if let Some(&(_, g)) = self.table.find(hash, |&(k, _)| k == key) {
            return (g, false);
        }
        let g = self.keys.len() as u32;
        self.table
            .insert_unique(hash, (key, g), |&(k, _)| spread(k));
        self.keys.push(key);
        (g, true)
    }

    /// Applies a [`Dict::sweep`]'s renumbering (`new[old]`); groups keep
    /// their numbers.
    pub fn renumber(&mut self, new: &[u32]) {
        self.table.clear();
        for (g, k) in self.keys.iter_mut().enumerate() {
            *k = new[*k as usize];
            debug_assert_ne!(*k, u32::MAX, "a sweep dropped a key a pane holds");
            self.table
                .insert_unique(spread(*k), (*k, g as u32), |&(k, _)| spread(k));
        }
    }

    /// Heap bytes held.
    pub fn memory(&self) -> usize {
        self.keys.capacity() * 4 + self.table.capacity() * 9
    }
}

/// The (group, value number) pairs a DISTINCT aggregate has seen in a pane;
/// value numbers are those of the aggregate's [`Dict`].
#[derive(Default)]
pub struct Seen {
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
    /// Records that `group` saw value number `value`; false if it had before.
    pub fn insert(&mut self, group: u32, value: u32) -> bool {
        let p = pair(group, value);
        if self.pairs.insert(p) {
            self.order.push(p);
            true
        } else {
            false
        }
    }

    /// Applies a [`Dict::sweep`]'s renumbering (`new[old]`) of the values;
    /// the order of first sight stays.
    pub fn renumber(&mut self, new: &[u32]) {
        self.pairs.clear();
        for p in &mut self.order {
            let (g, v) = unpair(*p);
            debug_assert_ne!(
                new[v as usize],
                u32::MAX,
                "a sweep dropped a value a pane holds"
            );
            *p = pair(g, new[v as usize]);
            self.pairs.insert(*p);
        }
    }

    pub fn memory(&self) -> usize {
        self.pairs.capacity() * 9 + self.order.capacity() * 8
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
        assert_eq!(i.len(), 1235);
    }

    #[test]
    fn panes_find_groups_by_key_number_across_a_sweep() {
        let mut dict = Dict::default();
        let (mut a, mut b) = (Groups::default(), Groups::default());
        // Pane a holds the even keys, b every third; the rest are dead.
        for n in 0..10_000u32 {
            let k = dict.intern(format!("key-{n}").as_bytes());
            assert_eq!(k, n);
            if n % 2 == 0 {
                assert_eq!(a.group(k), (n / 2, true));
            }
            if n % 3 == 0 {
                assert_eq!(b.group(k), (n / 3, true));
            }
        }
        assert!(dict.sweep_due());
        assert_eq!(a.group(4), (2, false));
        let mut live = vec![false; dict.len()];
        for &k in a.keys().iter().chain(b.keys()) {
            live[k as usize] = true;
        }
        let new = dict.sweep(&live).expect("a third of the keys are dead");
        a.renumber(&new);
        b.renumber(&new);
        // 5,000 even + 3,334 multiples of 3 - 1,667 multiples of 6.
        assert_eq!(dict.len(), 6_667);
        for n in 0..10_000u32 {
            let key = format!("key-{n}");
            let (k, fresh) = dict.keys.intern(key.as_bytes());
            assert_eq!(fresh, n % 2 != 0 && n % 3 != 0, "{key}");
            if n % 2 == 0 {
                assert_eq!(a.group(k), (n / 2, false), "{key}");
                assert_eq!(dict.get(a.keys()[(n / 2) as usize]), key.as_bytes());
            }
            if n % 3 == 0 {
                assert_eq!(b.group(k), (n / 3, false), "{key}");
            }
        }
        // Nothing dead: the numbers stay.
        let live = vec![true; dict.len()];
        assert!(dict.sweep(&live).is_none());
        assert!(!dict.sweep_due());
    }

    #[test]
    fn key_numbers_sharing_low_bits_spread_over_buckets() {
        // Multiples of 1024 in a table of 1024 buckets.
        let mask = 1023;
        let buckets: HashSet<u64> = (0..1024u32).map(|k| spread(k << 10) & mask).collect();
        assert!(buckets.len() > 512, "{} buckets of 1024", buckets.len());
    }

    #[test]
    fn seen_reports_first_sightings_only_across_a_renumbering() {
        let mut s = Seen::default();
        assert!(s.insert(3, 0));
        assert!(s.insert(4, 0));
        assert!(!s.insert(3, 0));
        assert!(s.insert(3, 2));
        let order = |s: &Seen| s.order.iter().map(|&p| unpair(p)).collect::<Vec<_>>();
        assert_eq!(order(&s), vec![(3, 0), (4, 0), (3, 2)]);
        // Value 1 was dropped; 2 becomes 1.
        s.renumber(&[0, u32::MAX, 1]);
        assert_eq!(order(&s), vec![(3, 0), (4, 0), (3, 1)]);
        assert!(!s.insert(3, 1));
        assert!(s.insert(4, 1));
    }
}

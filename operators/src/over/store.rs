//! The operator's store: loading a key's state, flushing changed keys (evicting clean ones), and
//! dropping the state of keys no future row can reach.

use weir_state::codec;

use super::OverAggregateOp;
use super::state::{KeyState, TAG_EXPIRY, TAG_PENDING, TAG_STATE, expiry_key, expiry_of, tagged};

impl OverAggregateOp {
    /// The key's state, read from the store if it is not in memory.
    pub(super) fn load(&mut self, key: &[u8]) -> anyhow::Result<&mut KeyState> {
        if !self.keys.contains_key(key) {
            let mut ks = match &self.store {
                Some(store) => match store.get(&tagged(TAG_STATE, key))? {
                    Some(bytes) => KeyState::decode(&bytes, self.calls.len())?,
                    None => KeyState::default(),
                },
                None => KeyState::default(),
            };
            if ks.stored {
                ks.stored_expiry = self.expiry_of(&ks);
            }
            self.bytes += ks.bytes;
            self.keys.insert(key.into(), ks);
        } else if let Some(at) = self.expiry_of(&self.keys[key]) {
            self.expiry.remove(&(at, Box::from(key)));
        }
        Ok(self.keys.get_mut(key).expect("inserted above"))
    }

    pub(super) fn expiry_of(&self, ks: &KeyState) -> Option<i64> {
        expiry_of(ks, self.retention_ms)
    }

    /// Writes the changed keys to the store; drops clean keys from memory
    /// when over budget.
    pub(super) fn flush(&mut self, evict: bool) -> anyhow::Result<()> {
        let Some(store) = self.store.clone() else {
            return Ok(());
        };
        let mut batch = store.batch();
        let retention = self.retention_ms;
        for (key, ks) in self.keys.iter_mut() {
            if !ks.dirty {
                continue;
            }
            let expiry = expiry_of(ks, retention);
            store.put(&mut batch, &tagged(TAG_STATE, key), &ks.encode())?;
            let pending = !ks.pending.is_empty();
            if pending != ks.stored_pending {
                if pending {
                    store.put(&mut batch, &tagged(TAG_PENDING, key), &[])?;
                } else {
                    store.delete(&mut batch, &tagged(TAG_PENDING, key))?;
                }
                ks.stored_pending = pending;
            }
            if expiry != ks.stored_expiry {
                if let Some(old) = ks.stored_expiry {
                    store.delete(&mut batch, &expiry_key(old, key))?;
                }
                if let Some(new) = expiry {
                    store.put(&mut batch, &expiry_key(new, key), &[])?;
                }
                ks.stored_expiry = expiry;
            }
            ks.stored = true;
            ks.dirty = false;
        }
        store.write(batch)?;
        if evict {
            let mut freed = 0;
            let expiry = &mut self.expiry;
            self.keys.retain(|key, ks| {
                let keep = !ks.pending.is_empty();
                if !keep {
                    freed += ks.bytes;
                    if let Some(at) = ks.stored_expiry {
                        expiry.remove(&(at, key.clone()));
                    }
                }
                keep
            });
            // Keys left in the expiry set are all in memory.
            self.bytes = self.bytes.saturating_sub(freed);
        }
        Ok(())
    }

    /// Drops the state of keys no future row can reach: those in memory, and
    /// with `stored` also those only in the store (one scan of the expiry
    /// index, done at flushes rather than every watermark).
    pub(super) fn expire(&mut self, watermark: i64, stored: bool) -> anyhow::Result<()> {
        let mut gone: Vec<(i64, Box<[u8]>)> = Vec::new();
        while let Some((at, _)) = self.expiry.first() {
            if *at > watermark {
                break;
            }
            gone.push(self.expiry.pop_first().expect("first exists"));
        }
        if gone.is_empty() && !stored {
            return Ok(());
        }
        let store = self.store.clone();
        let mut batch = store.as_ref().map(|s| s.batch());
        for (_, key) in &gone {
            if let Some(ks) = self.keys.remove(key) {
                self.bytes = self.bytes.saturating_sub(ks.bytes);
                if let (Some(s), Some(b)) = (&store, &mut batch)
                    && ks.stored
                {
                    s.delete(b, &tagged(TAG_STATE, key))?;
                    if let Some(at) = ks.stored_expiry {
                        s.delete(b, &expiry_key(at, key))?;
                    }
                    if ks.stored_pending {
                        s.delete(b, &tagged(TAG_PENDING, key))?;
                    }
                }
            }
        }
        // Stored keys that are not in memory: their expiry entries.
        if let (true, Some(s), Some(b)) = (stored, &store, &mut batch) {
            let mut stale = Vec::new();
            for entry in s.scan(&[TAG_EXPIRY])? {
                let (k, _) = entry?;
                let at = codec::key::i64_at(&k, 1, "OVER expiry")?;
                if at > watermark {
                    break;
                }
                stale.push((k, at));
            }
            for (k, _) in stale {
                let key = &k[9..];
                if self.keys.contains_key(key) {
                    // In memory (touched since): its flush rewrites the entry.
                    continue;
                }
                s.delete(b, &k)?;
                s.delete(b, &tagged(TAG_STATE, key))?;
            }
        }
        if let (Some(s), Some(b)) = (store, batch) {
            s.write(b)?;
        }
        Ok(())
    }
}

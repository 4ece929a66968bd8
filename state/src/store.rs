//! A task's RocksDB database, its checkpoints and its restore.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use rocksdb::checkpoint::Checkpoint;
use rocksdb::{
    BlockBasedOptions, Cache, ColumnFamilyDescriptor, DB, Direction, IteratorMode, Options,
    ReadOptions, WriteBatch, WriteOptions,
};

use crate::changes::{
    ChangeLog, OP_DELETE, OP_DELETE_PREFIX, OP_PUT, Op, OpBuffer, decode_chunk, encode_chunk,
};
use crate::codec::CodecError;
use crate::meta::CheckpointMeta;

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("state store at {path}: {source}")]
    Rocks {
        path: PathBuf,
        #[source]
        source: rocksdb::Error,
    },
    #[error("state store at {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("state store at {path}: checkpoint metadata is unreadable: {source}")]
    Meta {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("state store: column family '{0}' was not opened")]
    MissingColumnFamily(String),
    #[error(transparent)]
    Codec(#[from] CodecError),
}

const META_KEY: &[u8] = b"weir.checkpoint";
const WORKING: &str = "working";
const CHECKPOINTS: &str = "checkpoints";

/// How long a checkpoint took and how big it is.
#[derive(Debug, Clone, Copy, Default)]
pub struct CheckpointStats {
    pub id: u64,
    pub duration: Duration,
    /// Bytes of the checkpoint's files (SST files are hard links shared with
    /// earlier checkpoints and the working database).
    pub bytes: u64,
}

/// The database a task runs on, opened from its newest checkpoint.
pub struct TaskStore {
    root: PathBuf,
    db: Arc<DB>,
    task: u32,
    /// The operator column families, in the order change chunks number them.
    column_families: Vec<String>,
    changes: Arc<Mutex<ChangeLog>>,
    restored: Option<CheckpointMeta>,
    restore_time: Duration,
}

fn rocks(path: &Path) -> impl FnOnce(rocksdb::Error) -> StateError + '_ {
    move |source| StateError::Rocks {
        path: path.to_owned(),
        source,
    }
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> StateError + '_ {
    move |source| StateError::Io {
        path: path.to_owned(),
        source,
    }
}

fn db_options(cache: &Cache) -> Options {
    let mut opts = Options::default();
    opts.create_if_missing(true);
    opts.create_missing_column_families(true);
    opts.set_compression_type(rocksdb::DBCompressionType::Lz4);
    opts.set_write_buffer_size(16 << 20);
    opts.set_max_background_jobs(2);
    let mut table = BlockBasedOptions::default();
    table.set_block_cache(cache);
    table.set_bloom_filter(10.0, false);
    opts.set_block_based_table_factory(&table);
    opts
}

impl TaskStore {
    /// Opens the store of task `task` under `root` with one column family per
    /// name in `column_families`, restoring the newest complete checkpoint if
    /// there is one. `cache_bytes` bounds RocksDB's block cache.
    pub fn open(
        root: &Path,
        task: u32,
        column_families: &[String],
        cache_bytes: usize,
    ) -> Result<Self, StateError> {
        let started = Instant::now();
        let checkpoints = root.join(CHECKPOINTS);
        fs::create_dir_all(&checkpoints).map_err(io(&checkpoints))?;
        let working = root.join(WORKING);
        if working.exists() {
            fs::remove_dir_all(&working).map_err(io(&working))?;
        }
        let newest = newest_checkpoint(&checkpoints)?;
        if let Some((_, dir)) = &newest {
            copy_checkpoint(dir, &working)?;
        }
        let cache = Cache::new_lru_cache(cache_bytes.max(1 << 20));
        let opts = db_options(&cache);
        let mut names: Vec<String> = column_families.to_vec();
        if working.exists() {
            for existing in DB::list_cf(&opts, &working).map_err(rocks(&working))? {
                if !names.contains(&existing) {
                    names.push(existing);
                }
            }
        }
        let descriptors = names
            .iter()
            .filter(|n| n.as_str() != rocksdb::DEFAULT_COLUMN_FAMILY_NAME)
            .map(|n| ColumnFamilyDescriptor::new(n, db_options(&cache)));
        let db = DB::open_cf_descriptors(&opts, &working, descriptors).map_err(rocks(&working))?;
        let restored = match db.get(META_KEY).map_err(rocks(&working))? {
            Some(bytes) => {
                Some(
                    serde_json::from_slice(&bytes).map_err(|source| StateError::Meta {
                        path: working.clone(),
                        source,
                    })?,
                )
            }
            None => None,
        };
        let mut column_families: Vec<String> = names
            .into_iter()
            .filter(|n| n.as_str() != rocksdb::DEFAULT_COLUMN_FAMILY_NAME)
            .collect();
        column_families.sort();
        Ok(Self {
            root: root.to_owned(),
            db: Arc::new(db),
            task,
            column_families,
            changes: Arc::default(),
            restored,
            restore_time: started.elapsed(),
        })
    }

    /// Deletes the task's state under `root`: the working database and every
    /// checkpoint. The store must not be open.
    pub fn wipe(root: &Path) -> Result<(), StateError> {
        if root.exists() {
            fs::remove_dir_all(root).map_err(io(root))?;
        }
        Ok(())
    }

    /// The checkpoint the store was opened from, if any.
    pub fn restored(&self) -> Option<&CheckpointMeta> {
        self.restored.as_ref()
    }

    /// How long opening (and restoring) took.
    pub fn restore_time(&self) -> Duration {
        self.restore_time
    }

    /// The state handle of one operator's column family.
    pub fn operator(&self, column_family: &str) -> Result<OperatorState, StateError> {
        if self.db.cf_handle(column_family).is_none() {
            return Err(StateError::MissingColumnFamily(column_family.to_owned()));
        }
        let cf_index = self
            .column_families
            .iter()
            .position(|c| c == column_family)
            .ok_or_else(|| StateError::MissingColumnFamily(column_family.to_owned()))?
            as u16;
        Ok(OperatorState {
            db: self.db.clone(),
            cf: column_family.to_owned(),
            cf_index,
            prefix: self.task.to_be_bytes(),
            changes: self.changes.clone(),
        })
    }

    /// From now on, records every write the operators make, for
    /// [`TaskStore::take_changes`].
    pub fn capture_changes(&self) {
        lock(&self.changes).enabled = true;
    }

    /// The recorded writes as self-describing chunks of about `max_bytes`,
    /// oldest first. With `all`, everything recorded; otherwise only full
    /// chunks, so they can be shipped while the rest fills up.
    pub fn take_changes(&self, max_bytes: usize, all: bool) -> Vec<Vec<u8>> {
        lock(&self.changes).take_chunks(&self.column_families, max_bytes, all)
    }

    /// Bytes of recorded writes not taken yet.
    pub fn pending_changes(&self) -> usize {
        lock(&self.changes).pending_bytes()
    }

    /// Every key of the task's operators, as put operations in chunks of
    /// about `max_bytes` handed to `f`: applied to an empty store, they
    /// rebuild the state. Returns the bytes produced.
    pub fn snapshot<E: From<StateError>>(
        &self,
        max_bytes: usize,
        mut f: impl FnMut(Vec<u8>) -> Result<(), E>,
    ) -> Result<u64, E> {
        let mut total = 0u64;
        let mut ops = OpBuffer::default();
        for (i, name) in self.column_families.iter().enumerate() {
            let state = self.operator(name)?;
            for entry in state.scan(&[])? {
                let (k, v) = entry?;
                ops.push(OP_PUT, i as u16, &k, Some(&v));
                if ops.bytes.len() >= max_bytes {
                    let chunk = encode_chunk(&self.column_families, &ops.bytes);
                    total += chunk.len() as u64;
                    f(chunk)?;
                    ops.bytes.clear();
                }
            }
        }
        if !ops.bytes.is_empty() {
            let chunk = encode_chunk(&self.column_families, &ops.bytes);
            total += chunk.len() as u64;
            f(chunk)?;
        }
        Ok(total)
    }

    /// Applies a chunk of changes (from [`TaskStore::take_changes`] or
    /// [`TaskStore::snapshot`]) to the store. Not recorded as changes.
    pub fn apply_changes(&self, chunk: &[u8]) -> Result<(), StateError> {
        let working = self.root.join(WORKING);
        let mut batch = WriteBatch::default();
        let prefix = self.task.to_be_bytes();
        let full = |k: &[u8]| {
            let mut f = Vec::with_capacity(4 + k.len());
            f.extend_from_slice(&prefix);
            f.extend_from_slice(k);
            f
        };
        for op in decode_chunk(chunk)? {
            let (Op::Put(cf, ..) | Op::Delete(cf, _) | Op::DeletePrefix(cf, _)) = op;
            let handle = self
                .db
                .cf_handle(cf)
                .ok_or_else(|| StateError::MissingColumnFamily(cf.to_owned()))?;
            match op {
                Op::Put(_, k, v) => batch.put_cf(handle, full(k), v),
                Op::Delete(_, k) => batch.delete_cf(handle, full(k)),
                Op::DeletePrefix(_, p) => {
                    let from = full(p);
                    let to = prefix_successor(&from);
                    batch.delete_range_cf(handle, from, to)
                }
            }
        }
        let mut wo = WriteOptions::default();
        wo.disable_wal(true);
        self.db.write_opt(batch, &wo).map_err(rocks(&working))
    }

    /// Marks the store as restored from `meta` (after its state was rebuilt
    /// with [`TaskStore::apply_changes`]).
    pub fn set_restored(&mut self, meta: CheckpointMeta, took: Duration) {
        self.restored = Some(meta);
        self.restore_time += took;
    }

    /// Makes the working state plus `meta` durable as checkpoint `meta.id`,
    /// then drops older checkpoints. Operators must have written their
    /// in-memory state to the store first. The checkpoint appears atomically
    /// (a directory rename); a crash before that leaves the previous one.
    pub fn checkpoint(&mut self, meta: &CheckpointMeta) -> Result<CheckpointStats, StateError> {
        let started = Instant::now();
        let working = self.root.join(WORKING);
        let bytes = serde_json::to_vec(meta).map_err(|source| StateError::Meta {
            path: working.clone(),
            source,
        })?;
        let mut wo = WriteOptions::default();
        wo.disable_wal(true);
        self.db
            .put_opt(META_KEY, bytes, &wo)
            .map_err(rocks(&working))?;
        let checkpoints = self.root.join(CHECKPOINTS);
        let name = format!("{:020}", meta.id);
        let tmp = checkpoints.join(format!("{name}.tmp"));
        if tmp.exists() {
            fs::remove_dir_all(&tmp).map_err(io(&tmp))?;
        }
        Checkpoint::new(&self.db)
            .and_then(|c| c.create_checkpoint(&tmp))
            .map_err(rocks(&tmp))?;
        crate::fault::point("checkpoint-before-rename");
        let dir = checkpoints.join(&name);
        fs::rename(&tmp, &dir).map_err(io(&dir))?;
        sync_dir(&checkpoints)?;
        // Older checkpoints are no longer needed once this one is in place.
        for entry in fs::read_dir(&checkpoints).map_err(io(&checkpoints))? {
            let entry = entry.map_err(io(&checkpoints))?;
            let file_name = entry.file_name();
            let n = file_name.to_string_lossy();
            if n != name && !n.ends_with(".tmp") {
                fs::remove_dir_all(entry.path()).map_err(io(&entry.path()))?;
            }
        }
        let mut size = 0;
        for entry in fs::read_dir(&dir).map_err(io(&dir))? {
            let entry = entry.map_err(io(&dir))?;
            size += entry.metadata().map(|m| m.len()).unwrap_or(0);
        }
        Ok(CheckpointStats {
            id: meta.id,
            duration: started.elapsed(),
            bytes: size,
        })
    }
}

fn newest_checkpoint(dir: &Path) -> Result<Option<(u64, PathBuf)>, StateError> {
    let mut newest: Option<(u64, PathBuf)> = None;
    for entry in fs::read_dir(dir).map_err(io(dir))? {
        let entry = entry.map_err(io(dir))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.ends_with(".tmp") {
            // A checkpoint that never completed.
            fs::remove_dir_all(entry.path()).map_err(io(&entry.path()))?;
            continue;
        }
        if let Ok(id) = name.parse::<u64>()
            && newest.as_ref().is_none_or(|(n, _)| id > *n)
        {
            newest = Some((id, entry.path()));
        }
    }
    Ok(newest)
}

/// Copies a checkpoint to `to`: SST files are immutable, so they are hard
/// links; the rest (manifest, options) is small and copied.
fn copy_checkpoint(from: &Path, to: &Path) -> Result<(), StateError> {
    fs::create_dir_all(to).map_err(io(to))?;
    for entry in fs::read_dir(from).map_err(io(from))? {
        let entry = entry.map_err(io(from))?;
        let src = entry.path();
        let dst = to.join(entry.file_name());
        if src.extension().is_some_and(|e| e == "sst") {
            fs::hard_link(&src, &dst).map_err(io(&dst))?;
        } else {
            fs::copy(&src, &dst).map_err(io(&dst))?;
        }
    }
    Ok(())
}

fn sync_dir(dir: &Path) -> Result<(), StateError> {
    fs::File::open(dir)
        .and_then(|f| f.sync_all())
        .map_err(io(dir))
}

/// One operator's state: its column family, with every key under the task's
/// prefix. Writes skip the WAL: durability comes from checkpoints.
#[derive(Clone)]
pub struct OperatorState {
    db: Arc<DB>,
    cf: String,
    cf_index: u16,
    prefix: [u8; 4],
    changes: Arc<Mutex<ChangeLog>>,
}

/// A key (without the task prefix) and its value.
pub type Entry = (Box<[u8]>, Box<[u8]>);

/// Puts and deletes applied together by [`OperatorState::write`].
pub struct StateBatch {
    batch: WriteBatch,
    /// The same operations for the change log, when it records.
    ops: Option<(OpBuffer, Vec<usize>)>,
}

impl StateBatch {
    fn record(&mut self, op: u8, cf: u16, key: &[u8], value: Option<&[u8]>) {
        if let Some((buf, ends)) = &mut self.ops {
            buf.push(op, cf, key, value);
            ends.push(buf.bytes.len());
        }
    }
}

fn lock(changes: &Mutex<ChangeLog>) -> MutexGuard<'_, ChangeLog> {
    changes.lock().unwrap_or_else(|e| e.into_inner())
}

impl OperatorState {
    fn full_key(&self, key: &[u8]) -> Vec<u8> {
        let mut k = Vec::with_capacity(4 + key.len());
        k.extend_from_slice(&self.prefix);
        k.extend_from_slice(key);
        k
    }

    fn handle(&self) -> Result<&rocksdb::ColumnFamily, StateError> {
        self.db
            .cf_handle(&self.cf)
            .ok_or_else(|| StateError::MissingColumnFamily(self.cf.clone()))
    }

    fn err(&self) -> impl FnOnce(rocksdb::Error) -> StateError + '_ {
        move |source| StateError::Rocks {
            path: self.db.path().to_owned(),
            source,
        }
    }

    pub fn batch(&self) -> StateBatch {
        StateBatch {
            batch: WriteBatch::default(),
            ops: lock(&self.changes)
                .enabled
                .then(|| (OpBuffer::default(), Vec::new())),
        }
    }

    pub fn put(&self, batch: &mut StateBatch, key: &[u8], value: &[u8]) -> Result<(), StateError> {
        let cf = self.handle()?;
        batch.batch.put_cf(cf, self.full_key(key), value);
        batch.record(OP_PUT, self.cf_index, key, Some(value));
        Ok(())
    }

    pub fn delete(&self, batch: &mut StateBatch, key: &[u8]) -> Result<(), StateError> {
        let cf = self.handle()?;
        batch.batch.delete_cf(cf, self.full_key(key));
        batch.record(OP_DELETE, self.cf_index, key, None);
        Ok(())
    }

    /// Deletes every key starting with `prefix`.
    pub fn delete_prefix(&self, batch: &mut StateBatch, prefix: &[u8]) -> Result<(), StateError> {
        let cf = self.handle()?;
        let from = self.full_key(prefix);
        let to = prefix_successor(&from);
        batch.batch.delete_range_cf(cf, from, to);
        batch.record(OP_DELETE_PREFIX, self.cf_index, prefix, None);
        Ok(())
    }

    pub fn write(&self, batch: StateBatch) -> Result<(), StateError> {
        let mut wo = WriteOptions::default();
        wo.disable_wal(true);
        self.db.write_opt(batch.batch, &wo).map_err(self.err())?;
        if let Some((ops, ends)) = &batch.ops {
            lock(&self.changes).append(ops, ends);
        }
        Ok(())
    }

    pub fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StateError> {
        let cf = self.handle()?;
        self.db.get_cf(cf, self.full_key(key)).map_err(self.err())
    }

    /// Values of `keys`, in order.
    pub fn multi_get(&self, keys: &[&[u8]]) -> Result<Vec<Option<Vec<u8>>>, StateError> {
        let cf = self.handle()?;
        self.db
            .multi_get_cf(keys.iter().map(|k| (cf, self.full_key(k))))
            .into_iter()
            .map(|r| r.map_err(self.err()))
            .collect()
    }

    /// Key-value pairs whose key starts with `prefix`, in key order, keys
    /// without the task prefix. Reads bypass the block cache's LRU promotion
    /// for one-off scans.
    pub fn scan(
        &self,
        prefix: &[u8],
    ) -> Result<impl Iterator<Item = Result<Entry, StateError>> + '_, StateError> {
        let cf = self.handle()?;
        let from = self.full_key(prefix);
        let mut ro = ReadOptions::default();
        ro.set_iterate_upper_bound(prefix_successor(&from));
        ro.fill_cache(false);
        let it = self
            .db
            .iterator_cf_opt(cf, ro, IteratorMode::From(&from, Direction::Forward));
        Ok(it.map(move |r| {
            r.map(|(k, v)| (k[4..].into(), v))
                .map_err(|source| StateError::Rocks {
                    path: self.db.path().to_owned(),
                    source,
                })
        }))
    }

    /// The first key at or after `from`, within the task's keys.
    pub fn first_key_from(&self, from: &[u8]) -> Result<Option<Box<[u8]>>, StateError> {
        Ok(self.scan_from(from)?.map(|(k, _)| k))
    }

    fn scan_from(&self, from: &[u8]) -> Result<Option<Entry>, StateError> {
        let cf = self.handle()?;
        let full = self.full_key(from);
        let mut ro = ReadOptions::default();
        ro.set_iterate_upper_bound(prefix_successor(&self.prefix));
        let mut it = self
            .db
            .iterator_cf_opt(cf, ro, IteratorMode::From(&full, Direction::Forward));
        match it.next() {
            None => Ok(None),
            Some(r) => {
                let (k, v) = r.map_err(self.err())?;
                Ok(Some((k[4..].into(), v)))
            }
        }
    }
}

/// The smallest key greater than every key starting with `prefix`.
fn prefix_successor(prefix: &[u8]) -> Vec<u8> {
    let mut s = prefix.to_vec();
    while let Some(last) = s.pop() {
        if last < u8::MAX {
            s.push(last + 1);
            return s;
        }
    }
    // All 0xff: no finite successor; an empty bound is never used by callers
    // because task prefixes are small integers.
    vec![u8::MAX; prefix.len() + 1]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(id: u64) -> CheckpointMeta {
        CheckpointMeta {
            id,
            source_topic: "t".into(),
            ..Default::default()
        }
    }

    #[test]
    fn a_checkpoint_restores_state_as_it_was_and_later_writes_vanish() {
        let dir = tempfile::tempdir().unwrap();
        let cfs = vec!["w".to_string()];
        {
            let mut store = TaskStore::open(dir.path(), 7, &cfs, 1 << 20).unwrap();
            assert!(store.restored().is_none());
            let op = store.operator("w").unwrap();
            let mut b = op.batch();
            op.put(&mut b, b"a1", b"x").unwrap();
            op.put(&mut b, b"a2", b"y").unwrap();
            op.put(&mut b, b"b1", b"z").unwrap();
            op.write(b).unwrap();
            store.checkpoint(&meta(1)).unwrap();
            // After the checkpoint: a write and a delete that a crash loses.
            let mut b = op.batch();
            op.put(&mut b, b"c1", b"lost").unwrap();
            op.delete_prefix(&mut b, b"a").unwrap();
            op.write(b).unwrap();
            let keys: Vec<_> = op.scan(b"").unwrap().map(|r| r.unwrap().0).collect();
            assert_eq!(keys, vec![b"b1".as_slice().into(), b"c1".as_slice().into()]);
        }
        let store = TaskStore::open(dir.path(), 7, &cfs, 1 << 20).unwrap();
        assert_eq!(store.restored().map(|m| m.id), Some(1));
        let op = store.operator("w").unwrap();
        let all: Vec<_> = op.scan(b"").unwrap().map(|r| r.unwrap()).collect();
        assert_eq!(all.len(), 3);
        assert_eq!(
            op.multi_get(&[b"a2", b"c1"]).unwrap(),
            vec![Some(b"y".to_vec()), None]
        );
        assert_eq!(
            op.first_key_from(b"a3").unwrap(),
            Some(b"b1".as_slice().into())
        );
    }

    #[test]
    fn an_unfinished_checkpoint_is_ignored_and_older_ones_are_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let cfs = vec!["w".to_string()];
        {
            let mut store = TaskStore::open(dir.path(), 0, &cfs, 1 << 20).unwrap();
            store.checkpoint(&meta(1)).unwrap();
            store.checkpoint(&meta(2)).unwrap();
        }
        let checkpoints = dir.path().join(CHECKPOINTS);
        fs::create_dir_all(checkpoints.join(format!("{:020}.tmp", 3))).unwrap();
        let names: Vec<_> = fs::read_dir(&checkpoints)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names.len(), 2, "checkpoint 1 was dropped: {names:?}");
        let store = TaskStore::open(dir.path(), 0, &cfs, 1 << 20).unwrap();
        assert_eq!(store.restored().map(|m| m.id), Some(2));
        assert!(!checkpoints.join(format!("{:020}.tmp", 3)).exists());
    }

    fn contents(store: &TaskStore, cf: &str) -> Vec<Entry> {
        let op = store.operator(cf).unwrap();
        op.scan(b"").unwrap().map(|r| r.unwrap()).collect()
    }

    #[test]
    fn recorded_changes_and_snapshots_rebuild_the_state_elsewhere() {
        let (a, b, c) = (
            tempfile::tempdir().unwrap(),
            tempfile::tempdir().unwrap(),
            tempfile::tempdir().unwrap(),
        );
        let cfs = vec!["w1".to_string(), "w2".to_string()];
        let store = TaskStore::open(a.path(), 3, &cfs, 1 << 20).unwrap();
        store.capture_changes();
        let (w1, w2) = (store.operator("w1").unwrap(), store.operator("w2").unwrap());
        let mut batch = w1.batch();
        for i in 0..500u32 {
            w1.put(
                &mut batch,
                format!("p1/{i:04}").as_bytes(),
                &i.to_be_bytes(),
            )
            .unwrap();
            w1.put(&mut batch, format!("p2/{i:04}").as_bytes(), b"x")
                .unwrap();
        }
        w1.write(batch).unwrap();
        let mut batch = w2.batch();
        w2.put(&mut batch, b"only", b"w2").unwrap();
        w2.write(batch).unwrap();
        let mut batch = w1.batch();
        w1.delete_prefix(&mut batch, b"p1/").unwrap();
        w1.put(&mut batch, b"p1/0007", b"again").unwrap();
        w1.write(batch).unwrap();

        // Shipped in pieces: full chunks first, then the rest.
        let mut chunks = store.take_changes(1000, false);
        assert!(chunks.len() > 5);
        assert!(store.pending_changes() < 1100);
        chunks.extend(store.take_changes(1000, true));
        assert_eq!(store.pending_changes(), 0);
        let replica = TaskStore::open(b.path(), 3, &cfs, 1 << 20).unwrap();
        for chunk in &chunks {
            replica.apply_changes(chunk).unwrap();
        }
        let mut snapshot = Vec::new();
        store
            .snapshot(700, |chunk| -> Result<(), StateError> {
                snapshot.push(chunk);
                Ok(())
            })
            .unwrap();
        assert!(snapshot.len() > 3);
        let from_snapshot = TaskStore::open(c.path(), 3, &cfs, 1 << 20).unwrap();
        for chunk in &snapshot {
            from_snapshot.apply_changes(chunk).unwrap();
        }
        for cf in ["w1", "w2"] {
            let want = contents(&store, cf);
            assert_eq!(contents(&replica, cf), want, "{cf} from changes");
            assert_eq!(contents(&from_snapshot, cf), want, "{cf} from the snapshot");
        }
        assert_eq!(contents(&store, "w1").len(), 501);
        assert_eq!(contents(&store, "w2").len(), 1);
    }

    #[test]
    fn tasks_do_not_see_each_others_keys() {
        let dir = tempfile::tempdir().unwrap();
        let cfs = vec!["w".to_string()];
        let store = TaskStore::open(dir.path(), 1, &cfs, 1 << 20).unwrap();
        let op = store.operator("w").unwrap();
        let other = OperatorState {
            prefix: 2u32.to_be_bytes(),
            ..op.clone()
        };
        let mut b = other.batch();
        other.put(&mut b, b"k", b"v").unwrap();
        other.write(b).unwrap();
        assert_eq!(op.scan(b"").unwrap().count(), 0);
        assert_eq!(op.first_key_from(b"").unwrap(), None);
        assert_eq!(other.scan(b"").unwrap().count(), 1);
    }
}

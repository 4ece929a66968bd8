//! A task's changelog topic: its state changes shipped to Kafka at every
//! checkpoint, so a run that lost its state directory (or another worker)
//! rebuilds the state and resumes exactly where the last checkpoint was.
//!
//! ```text
//! topic <group id>-<source>-changelog, compacted, one partition per task
//!   (`weir run`: one task per source, partition 0; a cluster job: a task
//!   per input partition, changelog partition = input partition)
//! <id>.<run>.d<seq>   chunk of state changes made towards checkpoint <id>   (shipped as they fill up)
//! <id>.<run>.s<seq>   chunk of a full snapshot of the state at checkpoint <id>
//! <id>.<run>.commit   the checkpoint's CheckpointMeta; its `changelog` chain names
//!                     the chunks that rebuild the state: a snapshot, then diffs
//! <id>.<run>.release  (cluster tasks) written after the final checkpoint of a
//!                     graceful stop: the partition's next owner may start
//! claim.<run>         (cluster tasks) a task taking the partition over; its
//!                     value names the silent owner it supersedes, if any
//! ```
//! `<run>` is random per process, so a checkpoint attempt that crashed never
//! shares a key with a later one: compaction can never replace a committed
//! chunk with an uncommitted one. Restore takes the last commit record in the
//! partition and applies its chain. A task that does have a local checkpoint
//! reads the partition after that checkpoint's commit record, so a checkpoint
//! committed to Kafka but not locally (a crash in between), or another run's
//! progress, is never lost. A snapshot is taken when the diffs since the last
//! one outgrow it (or the chain reaches 256 links), so the live records are
//! at most about twice the state's size; records no chain needs are deleted
//! (tombstones) one checkpoint later, once the newer chain is durable.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use rdkafka::consumer::Consumer;
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use tracing::warn;
use weir_state::{ChangelogLink, CheckpointMeta, TaskStore};

use crate::connection::Connection;
use crate::sink::Sink;

/// Bytes of state changes per changelog record.
pub const CHUNK_BYTES: usize = 256 << 10;
/// Diffs are not worth a snapshot before they reach this size.
const MIN_SNAPSHOT_INTERVAL_BYTES: u64 = 4 << 20;
/// Links per chain at most (the chain is in every commit record).
const MAX_CHAIN: usize = 256;

fn chunk_key(id: u64, run: u64, kind: char, seq: u32) -> String {
    format!("{id:020}.{run:016x}.{kind}{seq:06}")
}

fn commit_key(id: u64, run: u64) -> String {
    format!("{id:020}.{run:016x}.commit")
}

fn release_key(id: u64, run: u64) -> String {
    format!("{id:020}.{run:016x}.release")
}

fn claim_key(run: u64) -> String {
    format!("claim.{run:016x}")
}

/// Who owns a changelog partition, as its records say (in offset order):
/// a claim makes its run the owner if the partition had none or the claim
/// supersedes the current owner (taken for gone); a release by the owner
/// frees it; other records of the owner show it alive. The first of two
/// racing claims wins; the second is ignored.
#[derive(Debug, Default)]
struct Ownership {
    owner: Option<u64>,
    /// When the owner last wrote (ms since the epoch).
    last_ms: i64,
}

impl Ownership {
    fn apply(&mut self, key: &[u8], value: Option<&[u8]>, at_ms: i64) {
        let Ok(key) = std::str::from_utf8(key) else {
            return;
        };
        let Some(value) = value else {
            return; // tombstones are housekeeping of older records
        };
        if let Some(run) = key.strip_prefix("claim.") {
            let Ok(run) = u64::from_str_radix(run, 16) else {
                return;
            };
            let supersedes = std::str::from_utf8(value)
                .ok()
                .and_then(|v| u64::from_str_radix(v, 16).ok());
            if self.owner.is_none() || (supersedes.is_some() && supersedes == self.owner) {
                self.owner = Some(run);
                self.last_ms = at_ms;
            }
            return;
        }
        // <id>.<run>.<kind>
        let mut parts = key.split('.');
        let (Some(_), Some(run), Some(kind)) = (parts.next(), parts.next(), parts.next()) else {
            return;
        };
        let Ok(run) = u64::from_str_radix(run, 16) else {
            return;
        };
        if self.owner.is_none() && kind != "release" {
            // Written before claims were (or the claim was compacted away).
            self.owner = Some(run);
        }
        if self.owner == Some(run) {
            if kind == "release" {
                self.owner = None;
            } else {
                self.last_ms = at_ms;
            }
        }
    }
}

/// Takes ownership of a cluster task's changelog partition for `run`, so
/// that two workers never run a task at once. A group rebalance can assign
/// a partition before its previous owner has noticed it lost it (a member
/// the broker dropped, a slow revoke), and tansu was seen assigning one
/// partition to two members at once. So: wait until the partition is free
/// (its owner released it, or has written nothing for `lease`: a live task
/// writes a commit every checkpoint interval), write a claim, read on past
/// it, and own the partition only if the claim won; otherwise wait again.
/// Returns false if `stop` was set first. While an owner that is seen alive
/// (it wrote after the wait began) holds the partition, `waiting_since_ms`
/// holds when the wait began (Unix ms), so that the worker can tell a
/// handover (seconds) from a group that gave the partition to two members at
/// once (see `cluster::worker`); it is 0 again when this returns.
pub fn await_handover(
    sink: &Sink,
    topic: &str,
    partition: i32,
    lease: Duration,
    stop: &std::sync::atomic::AtomicBool,
    run: u64,
    waiting_since_ms: &std::sync::atomic::AtomicU64,
) -> anyhow::Result<bool> {
    /// Clears the mark however the wait ends.
    struct Clear<'a>(&'a std::sync::atomic::AtomicU64);
    impl Drop for Clear<'_> {
        fn drop(&mut self) {
            self.0.store(0, std::sync::atomic::Ordering::Relaxed);
        }
    }
    let _clear = Clear(waiting_since_ms);
    let consumer = crate::kafka::scan_consumer(sink.cluster(), "weir-changelog-handover")?;
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, partition, Offset::Beginning)?;
    consumer.assign(&tpl)?;
    let mut state = Ownership::default();
    let mut at_end = false;
    let mut claimed = false;
    let mut logged = false;
    let mut wait_began: Option<i64> = None;
    loop {
        if stop.load(std::sync::atomic::Ordering::Relaxed) {
            return Ok(false);
        }
        match consumer.poll(Duration::from_millis(100)) {
            None => {}
            Some(Ok(m)) => {
                let at = m
                    .timestamp()
                    .to_millis()
                    .unwrap_or_else(|| chrono::Utc::now().timestamp_millis());
                state.apply(m.key().unwrap_or_default(), m.payload(), at);
                at_end = false;
            }
            Some(Err(rdkafka::error::KafkaError::PartitionEOF(_))) => at_end = true,
            Some(Err(e)) => warn!("reading changelog '{topic}': {e} (retrying)"),
        }
        if !at_end {
            continue;
        }
        if state.owner == Some(run) {
            return Ok(true);
        }
        if claimed {
            // Read past our claim and another won: wait for that owner.
            claimed = false;
            tracing::info!(
                "changelog '{topic}' partition {partition}: another worker claimed it first; waiting"
            );
        }
        let now_ms = chrono::Utc::now().timestamp_millis();
        let silent_ms = now_ms - state.last_ms;
        let free = state.owner.is_none() || silent_ms >= lease.as_millis() as i64;
        if !free {
            // An owner that wrote after the wait began is alive (a killed one
            // only goes silent): from then on this is a wait for its release.
            let began = *wait_began.get_or_insert(now_ms);
            if state.last_ms > began {
                let _ = waiting_since_ms.compare_exchange(
                    0,
                    began.max(1) as u64,
                    std::sync::atomic::Ordering::Relaxed,
                    std::sync::atomic::Ordering::Relaxed,
                );
            }
            if !logged {
                tracing::info!(
                    "changelog '{topic}' partition {partition}: waiting for the previous owner to release it (or to be silent for {} ms)",
                    lease.as_millis()
                );
                logged = true;
            }
            continue;
        }
        wait_began = None;
        waiting_since_ms.store(0, std::sync::atomic::Ordering::Relaxed);
        if let Some(gone) = state.owner {
            tracing::info!(
                "changelog '{topic}' partition {partition}: the previous owner ({gone:016x}) has written nothing for {silent_ms} ms and did not release it; taking over"
            );
        }
        let supersedes = state.owner.map(|r| format!("{r:016x}")).unwrap_or_default();
        sink.send_to(
            topic,
            partition,
            claim_key(run).as_bytes(),
            Some(supersedes.as_bytes()),
        )?;
        sink.flush()?;
        claimed = true;
        // The claim is acknowledged, so the partition's end is now past it.
        at_end = false;
    }
}

/// What a task writes to its changelog, and when.
pub struct Changelog {
    pub topic: String,
    pub partition: i32,
    run: u64,
    /// Diff chunks shipped towards the checkpoint in progress.
    seq: u32,
    shipped_bytes: u64,
    /// The chain the last checkpoint committed.
    chain: Vec<ChangelogLink>,
    /// Keys of records no longer needed, deleted at the next checkpoint.
    garbage: Vec<String>,
    force_snapshot: bool,
    /// This run's last commit record: (checkpoint id, key).
    last_commit: Option<(u64, String)>,
}

impl Changelog {
    /// Starts writing after a checkpoint whose chain is `chain` (empty: none,
    /// so the first checkpoint is a snapshot).
    pub fn new(
        topic: String,
        partition: i32,
        chain: Vec<ChangelogLink>,
        garbage: Vec<String>,
    ) -> Self {
        Self::with_run(topic, partition, chain, garbage, rand::random::<u64>())
    }

    /// As [`Changelog::new`], writing as `run` (a cluster task's claim on
    /// its partition names the run its records will carry).
    pub fn with_run(
        topic: String,
        partition: i32,
        chain: Vec<ChangelogLink>,
        garbage: Vec<String>,
        run: u64,
    ) -> Self {
        Self {
            topic,
            partition,
            run,
            seq: 0,
            shipped_bytes: 0,
            force_snapshot: chain.is_empty(),
            chain,
            garbage,
            last_commit: None,
        }
    }

    /// The next checkpoint writes a full snapshot (the changelog lost what the
    /// chain names).
    pub fn force_snapshot(&mut self) {
        self.force_snapshot = true;
    }

    /// Ships the changes that fill whole chunks, towards checkpoint `id`.
    pub fn ship_full(&mut self, sink: &Sink, store: &TaskStore, id: u64) -> anyhow::Result<()> {
        if store.pending_changes() < CHUNK_BYTES {
            return Ok(());
        }
        for chunk in store.take_changes(CHUNK_BYTES, false) {
            self.send_diff(sink, id, &chunk)?;
        }
        Ok(())
    }

    fn send_diff(&mut self, sink: &Sink, id: u64, chunk: &[u8]) -> anyhow::Result<()> {
        let key = chunk_key(id, self.run, 'd', self.seq);
        sink.send_to(&self.topic, self.partition, key.as_bytes(), Some(chunk))?;
        self.seq += 1;
        self.shipped_bytes += chunk.len() as u64;
        Ok(())
    }

    /// Ships the rest of checkpoint `id`'s changes, or a snapshot instead, and
    /// returns the chain that rebuilds the state as of checkpoint `id`. The
    /// caller flushes the sink, then writes the commit record.
    pub fn prepare(
        &mut self,
        sink: &Sink,
        store: &TaskStore,
        id: u64,
    ) -> anyhow::Result<Vec<ChangelogLink>> {
        for key in std::mem::take(&mut self.garbage) {
            sink.send_to(&self.topic, self.partition, key.as_bytes(), None)?;
        }
        let rest = store.take_changes(CHUNK_BYTES, true);
        let pending: u64 = rest.iter().map(|c| c.len() as u64).sum();
        let diffs: u64 = self
            .chain
            .iter()
            .filter(|l| !l.snapshot)
            .map(|l| l.bytes)
            .sum();
        let snapshot_size = self.chain.first().map(|l| l.bytes).unwrap_or(0);
        let snapshot = self.force_snapshot
            || self.chain.len() >= MAX_CHAIN
            || diffs + self.shipped_bytes + pending
                > snapshot_size.max(MIN_SNAPSHOT_INTERVAL_BYTES);
        let link = if snapshot {
            // Diff chunks already shipped for this checkpoint are not needed.
            for seq in 0..self.seq {
                self.garbage.push(chunk_key(id, self.run, 'd', seq));
            }
            let mut seq = 0u32;
            let run = self.run;
            let (topic, partition) = (self.topic.clone(), self.partition);
            let bytes = store.snapshot(CHUNK_BYTES, |chunk| -> anyhow::Result<()> {
                let key = chunk_key(id, run, 's', seq);
                sink.send_to(&topic, partition, key.as_bytes(), Some(&chunk))?;
                seq += 1;
                Ok(())
            })?;
            ChangelogLink {
                id,
                run: self.run,
                snapshot: true,
                chunks: seq,
                bytes,
            }
        } else {
            for chunk in &rest {
                self.send_diff(sink, id, chunk)?;
            }
            ChangelogLink {
                id,
                run: self.run,
                snapshot: false,
                chunks: self.seq,
                bytes: self.shipped_bytes,
            }
        };
        let mut chain = if snapshot {
            Vec::new()
        } else {
            self.chain.clone()
        };
        // A checkpoint that changed nothing adds no link.
        if link.snapshot || link.chunks > 0 {
            chain.push(link);
        }
        Ok(chain)
    }

    /// Marks the partition released: its task stopped after a final
    /// checkpoint, and a next owner need not wait (see [`await_handover`]).
    pub fn release(&mut self, sink: &Sink, last_checkpoint: u64) -> anyhow::Result<()> {
        let key = release_key(last_checkpoint, self.run);
        sink.send_to(&self.topic, self.partition, key.as_bytes(), Some(b""))?;
        // Compacted away at the next owner's first checkpoint.
        self.garbage.push(key);
        sink.flush()
    }

    /// Writes checkpoint `meta`'s commit record (its chain in
    /// `meta.changelog`). Once flushed, a restore from the changelog arrives
    /// at `meta`.
    pub fn commit(&mut self, sink: &Sink, meta: &CheckpointMeta) -> anyhow::Result<()> {
        let value = serde_json::to_vec(meta)?;
        let key = commit_key(meta.id, self.run);
        sink.send_to(&self.topic, self.partition, key.as_bytes(), Some(&value))?;
        let chain = meta.changelog.clone().unwrap_or_default();
        // The previous commit record is needed only while its checkpoint is a
        // link of the chain (a checkpoint that changed nothing is not).
        if let Some((id, prev)) = self.last_commit.replace((meta.id, key))
            && !chain.iter().any(|l| l.id == id && l.run == self.run)
        {
            self.garbage.push(prev);
        }
        if chain.first().is_some_and(|l| l.snapshot && l.id == meta.id) {
            // A new snapshot: the previous chain can go (after this commit is durable).
            for l in &self.chain {
                self.garbage.extend(link_keys(l));
            }
        }
        self.chain = chain;
        self.seq = 0;
        self.shipped_bytes = 0;
        self.force_snapshot = false;
        Ok(())
    }

    /// The chain of the last commit.
    pub fn chain(&self) -> &[ChangelogLink] {
        &self.chain
    }
}

/// Every key a link wrote, commit record included.
fn link_keys(l: &ChangelogLink) -> Vec<String> {
    let kind = if l.snapshot { 's' } else { 'd' };
    (0..l.chunks)
        .map(|s| chunk_key(l.id, l.run, kind, s))
        .chain([commit_key(l.id, l.run)])
        .collect()
}

/// What a task found in its changelog partition.
pub struct Restored {
    /// The checkpoint the store now holds.
    pub meta: CheckpointMeta,
    /// Records read and their bytes.
    pub records: u64,
    pub bytes: u64,
    pub took: Duration,
    /// Keys of live records no chain needs (attempts that crashed before
    /// their commit, garbage whose tombstones never went out): tombstone them.
    pub garbage: Vec<String>,
}

/// The live records of a stretch of the partition.
struct Read {
    values: HashMap<Box<[u8]>, Box<[u8]>>,
    /// Commit record keys, in offset order.
    commits: Vec<Box<[u8]>>,
    records: u64,
    bytes: u64,
}

impl Read {
    /// The newest commit still live, and its meta.
    fn newest(&self, topic: &str) -> anyhow::Result<Option<CheckpointMeta>> {
        let Some(key) = self
            .commits
            .iter()
            .rev()
            .find(|k| self.values.contains_key(*k))
        else {
            return Ok(None);
        };
        let meta = serde_json::from_slice(&self.values[key])
            .with_context(|| format!("changelog '{topic}': commit record is unreadable"))?;
        Ok(Some(meta))
    }

    /// Keys no link of `chain` (commit records included) needs.
    fn garbage(&self, chain: &[ChangelogLink]) -> Vec<String> {
        let live: std::collections::HashSet<String> = chain.iter().flat_map(link_keys).collect();
        self.values
            .keys()
            .filter_map(|k| std::str::from_utf8(k).ok())
            .filter(|k| !live.contains(*k))
            .map(str::to_owned)
            .collect()
    }
}

fn read(
    cluster: &Connection,
    topic: &str,
    partition: i32,
    from: Offset,
    timeout: Duration,
) -> anyhow::Result<Read> {
    let consumer = crate::kafka::scan_consumer(cluster, "weir-changelog-restore")?;
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, partition, from)?;
    consumer.assign(&tpl)?;
    let deadline = Instant::now() + timeout;
    let mut read = Read {
        values: HashMap::new(),
        commits: Vec::new(),
        records: 0,
        bytes: 0,
    };
    loop {
        if Instant::now() > deadline {
            bail!(
                "reading changelog '{topic}' partition {partition} took longer than {}s",
                timeout.as_secs()
            );
        }
        match consumer.poll(Duration::from_millis(100)) {
            None => {}
            Some(Ok(m)) => {
                read.records += 1;
                let Some(key) = m.key() else { continue };
                match m.payload() {
                    Some(v) => {
                        read.bytes += v.len() as u64;
                        if key.ends_with(b".commit") {
                            read.commits.push(key.into());
                        }
                        read.values.insert(key.into(), v.into());
                    }
                    None => {
                        read.values.remove(key);
                    }
                }
            }
            Some(Err(rdkafka::error::KafkaError::PartitionEOF(_))) => break,
            Some(Err(e)) => warn!("reading changelog '{topic}': {e} (retrying)"),
        }
    }
    Ok(read)
}

/// Refuses a checkpoint another plan wrote, before any of it is applied.
fn check_plan(
    topic: &str,
    meta: &CheckpointMeta,
    fingerprint: &str,
    source_topic: &str,
) -> anyhow::Result<()> {
    if meta.plan_fingerprint != fingerprint || meta.source_topic != source_topic {
        bail!(
            "changelog '{topic}' holds state of a different pipeline (or a different version of this one); \
             delete that topic (and the state directory) to start over, or run with another group id"
        );
    }
    Ok(())
}

/// Applies the chunks of `links` from `read` to `store`.
fn apply(
    topic: &str,
    read: &Read,
    links: &[ChangelogLink],
    store: &TaskStore,
    checkpoint: u64,
) -> anyhow::Result<()> {
    for link in links {
        let kind = if link.snapshot { 's' } else { 'd' };
        for seq in 0..link.chunks {
            let key = chunk_key(link.id, link.run, kind, seq);
            let chunk = read.values.get(key.as_bytes()).with_context(|| {
                format!("changelog '{topic}' lacks record {key} of checkpoint {checkpoint}")
            })?;
            store
                .apply_changes(chunk)
                .with_context(|| format!("applying changelog record {key}"))?;
        }
    }
    Ok(())
}

/// Rebuilds `store` (empty) from the changelog's newest commit. `None` when
/// the changelog holds no checkpoint.
pub fn restore(
    cluster: &Connection,
    topic: &str,
    partition: i32,
    store: &TaskStore,
    plan: (&str, &str),
    timeout: Duration,
) -> anyhow::Result<Option<Restored>> {
    let started = Instant::now();
    let read = read(cluster, topic, partition, Offset::Beginning, timeout)?;
    let Some(meta) = read.newest(topic)? else {
        return Ok(None);
    };
    check_plan(topic, &meta, plan.0, plan.1)?;
    let chain = meta.changelog.clone().unwrap_or_default();
    if chain.first().is_none_or(|l| !l.snapshot) {
        bail!(
            "changelog '{topic}': checkpoint {} names no snapshot to start from",
            meta.id
        );
    }
    apply(topic, &read, &chain, store, meta.id)?;
    Ok(Some(Restored {
        garbage: read.garbage(&chain),
        meta,
        records: read.records,
        bytes: read.bytes,
        took: started.elapsed(),
    }))
}

/// What the changelog says about a restored local checkpoint.
pub enum CatchUp {
    /// Nothing newer was committed.
    UpToDate { garbage: Vec<String> },
    /// A newer checkpoint extends the local one's chain; its links were
    /// applied on top of the local state.
    Applied(Box<Restored>),
    /// A newer checkpoint on another chain (another run went on from the
    /// changelog): the local state is stale, restore from scratch.
    Stale(u64),
}

/// Reads the changelog after the local checkpoint's commit record and, if a
/// newer checkpoint was committed there, brings `store` up to it.
pub fn catch_up(
    cluster: &Connection,
    topic: &str,
    partition: i32,
    store: &TaskStore,
    local: &CheckpointMeta,
    plan: (&str, &str),
    timeout: Duration,
) -> anyhow::Result<CatchUp> {
    let started = Instant::now();
    let Some(from) = local.changelog_offset else {
        return Ok(CatchUp::UpToDate {
            garbage: Vec::new(),
        });
    };
    let read = read(cluster, topic, partition, Offset::Offset(from), timeout)?;
    let local_chain = local.changelog.clone().unwrap_or_default();
    let newest = match read.newest(topic)? {
        Some(m) if m.id > local.id => m,
        _ => {
            return Ok(CatchUp::UpToDate {
                garbage: read.garbage(&local_chain),
            });
        }
    };
    check_plan(topic, &newest, plan.0, plan.1)?;
    let chain = newest.changelog.clone().unwrap_or_default();
    if chain.len() < local_chain.len() || chain[..local_chain.len()] != local_chain[..] {
        return Ok(CatchUp::Stale(newest.id));
    }
    apply(topic, &read, &chain[local_chain.len()..], store, newest.id)?;
    Ok(CatchUp::Applied(Box::new(Restored {
        garbage: read.garbage(&chain),
        meta: newest,
        records: read.records,
        bytes: read.bytes,
        took: started.elapsed(),
    })))
}

#[cfg(test)]
mod tests {
    use super::Ownership;

    #[test]
    fn the_first_claim_wins_and_a_release_frees() {
        let mut o = Ownership::default();
        o.apply(b"claim.00000000000000aa", Some(b""), 1);
        o.apply(b"claim.00000000000000bb", Some(b""), 2);
        assert_eq!(o.owner, Some(0xaa));
        o.apply(
            b"00000000000000000003.00000000000000bb.commit",
            Some(b"{}"),
            3,
        );
        assert_eq!(
            (o.owner, o.last_ms),
            (Some(0xaa), 1),
            "a loser's records are not the owner's"
        );
        o.apply(
            b"00000000000000000003.00000000000000aa.commit",
            Some(b"{}"),
            4,
        );
        assert_eq!(o.last_ms, 4);
        // Taking over from a silent owner: only a claim naming it.
        o.apply(b"claim.00000000000000cc", Some(b"00000000000000bb"), 5);
        assert_eq!(o.owner, Some(0xaa));
        o.apply(b"claim.00000000000000cc", Some(b"00000000000000aa"), 6);
        assert_eq!(o.owner, Some(0xcc));
        o.apply(
            b"00000000000000000004.00000000000000cc.release",
            Some(b""),
            7,
        );
        assert_eq!(o.owner, None);
    }
}

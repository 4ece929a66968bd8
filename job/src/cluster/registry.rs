//! The job registry: a compacted topic (one partition) that every worker
//! follows, holding each job's definition: its SQL text, the bytes of the
//! files it reads (models), the variables its `${VAR}`s resolved to, and
//! whether it should run.
//!
//! ```text
//! key  job/<name>                           value  JobSpec (JSON); the newest record wins
//! key  file/<name>/<version>/<file>/<chunk> value  raw bytes (≤ 512 KiB per record)
//! ```
//!
//! A submit writes a version's file chunks first, then its spec, so a reader
//! that has seen a spec has seen its chunks (one partition keeps the order).
//! The chunks of a version a newer submit replaced are tombstoned by it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context as _, bail};
use serde::{Deserialize, Serialize};

use crate::connection::Connection;
use crate::kafka::{TopicFollower, producer_config};
use crate::sink::Sink;
use crate::topics::ensure_cluster_topic;

/// The default registry topic.
pub const REGISTRY_TOPIC: &str = "weir-jobs";
/// Largest file chunk: under Kafka's default `max.message.bytes` (1 MiB).
pub const CHUNK_BYTES: usize = 512 << 10;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JobState {
    Running,
    Stopped,
}

/// A file a job reads (a model), shipped in the registry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobFile {
    /// Where the job's SQL expects it, relative to the SQL file.
    pub path: String,
    pub bytes: u64,
    pub chunks: u32,
    /// BLAKE3 of the contents, checked when a worker puts the file together.
    pub blake3: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobSpec {
    pub name: String,
    /// Changes with every submit; workers restart a job whose version changed.
    pub version: String,
    pub state: JobState,
    /// The SQL file's name (positions in errors are reported against it).
    pub sql_file: String,
    pub sql: String,
    /// The `${VAR}`s of the SQL and what they resolved to at submit.
    pub env: BTreeMap<String, String>,
    pub files: Vec<JobFile>,
    pub submitted_at_ms: i64,
}

impl JobSpec {
    /// The consumer group and the prefix of the job's topics and state.
    pub fn group_id(&self) -> String {
        format!("weir-job-{}", self.name)
    }
}

/// The longest job name: its group id and topics (`weir-job-<name>-<source>-changelog`)
/// must stay within Kafka's 249 characters for a topic name.
pub const MAX_NAME: usize = 100;

/// Checks a job's name or version before it names a group, a topic or a
/// directory on a worker: 1 to [`MAX_NAME`] of `A-Z a-z 0-9 . _ -`, and not
/// `.` or `..`. Every worker applies it to every registry record, so a
/// record written by something other than `weir submit` cannot reach a path
/// outside the worker's state directory.
pub fn check_name(what: &str, name: &str) -> Result<(), String> {
    let allowed = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-');
    if name.is_empty() || name.len() > MAX_NAME {
        return Err(format!(
            "a job {what} has 1 to {MAX_NAME} characters, not {}",
            name.len()
        ));
    }
    if let Some(c) = name.chars().find(|&c| !allowed(c)) {
        return Err(format!(
            "'{}' is not a job {what}: {c:?} is not allowed (letters, digits, '.', '_', '-')",
            name.escape_debug()
        ));
    }
    if name == "." || name == ".." {
        return Err(format!("'{name}' is not a job {what}"));
    }
    Ok(())
}

/// Checks a registry record's job: its name as its key says, and its version.
fn check_spec(key_name: &str, spec: &JobSpec) -> Result<(), String> {
    check_name("name", &spec.name)?;
    check_name("version", &spec.version)?;
    if spec.name != key_name {
        return Err(format!(
            "the record for job '{}' describes a job named '{}'",
            key_name.escape_debug(),
            spec.name
        ));
    }
    Ok(())
}

pub fn job_key(name: &str) -> String {
    format!("job/{name}")
}

fn chunk_key(name: &str, version: &str, file: usize, chunk: u32) -> String {
    format!("file/{name}/{version}/{file}/{chunk}")
}

/// What the registry held when it was read.
#[derive(Debug, Default)]
pub struct Registry {
    pub jobs: BTreeMap<String, JobSpec>,
    chunks: BTreeMap<String, Vec<u8>>,
}

impl Registry {
    /// Takes in one registry record.
    pub fn apply(&mut self, key: &[u8], value: Option<&[u8]>) {
        let Ok(key) = std::str::from_utf8(key) else {
            return;
        };
        if let Some(name) = key.strip_prefix("job/") {
            match value.map(serde_json::from_slice::<JobSpec>) {
                Some(Ok(spec)) => match check_spec(name, &spec) {
                    Ok(()) => {
                        self.jobs.insert(name.to_owned(), spec);
                    }
                    Err(e) => {
                        tracing::warn!("job registry: refused the record for {key:?}: {e}");
                        self.jobs.remove(name);
                    }
                },
                Some(Err(e)) => tracing::warn!("job registry: unreadable record for {key}: {e}"),
                None => {
                    self.jobs.remove(name);
                }
            }
        } else if key.starts_with("file/") {
            match value {
                Some(v) => {
                    self.chunks.insert(key.to_owned(), v.to_vec());
                }
                None => {
                    self.chunks.remove(key);
                }
            }
        }
    }

    /// A job's file, put together from its chunks and checked.
    pub fn file(&self, spec: &JobSpec, index: usize) -> anyhow::Result<Vec<u8>> {
        let f = &spec.files[index];
        let mut bytes = Vec::with_capacity(f.bytes as usize);
        for c in 0..f.chunks {
            let key = chunk_key(&spec.name, &spec.version, index, c);
            let chunk = self.chunks.get(&key).with_context(|| {
                format!(
                    "job {}: chunk {c} of {} is missing from the registry",
                    spec.name, f.path
                )
            })?;
            bytes.extend_from_slice(chunk);
        }
        if blake3::hash(&bytes).to_hex().as_str() != f.blake3 {
            bail!("job {}: {} does not match its checksum", spec.name, f.path);
        }
        Ok(bytes)
    }

    /// Keys of chunks that belong to no current version of any job.
    fn orphan_chunks(&self) -> Vec<String> {
        self.chunks
            .keys()
            .filter(|k| {
                let mut parts = k.splitn(4, '/');
                let (_, name, version) = (parts.next(), parts.next(), parts.next());
                match (name, version) {
                    (Some(n), Some(v)) => self.jobs.get(n).is_none_or(|j| j.version != v),
                    _ => true,
                }
            })
            .cloned()
            .collect()
    }
}

/// Creates the registry topic (compacted, one partition) unless it exists.
pub fn ensure_registry(cluster: &Connection, topic: &str) -> anyhow::Result<()> {
    ensure_cluster_topic(cluster, topic, "job registry")
}

/// Follows the registry topic from its beginning.
pub struct RegistryReader {
    follower: TopicFollower,
    pub registry: Registry,
}

impl RegistryReader {
    pub fn open(cluster: &Connection, topic: &str) -> anyhow::Result<Self> {
        ensure_registry(cluster, topic)?;
        Ok(Self {
            follower: TopicFollower::open(cluster, topic, "weir-registry-reader")?,
            registry: Registry::default(),
        })
    }

    /// Whether the reader has reached the end of the topic once.
    pub fn caught_up(&self) -> bool {
        self.follower.caught_up
    }

    /// Takes in what arrived within `timeout`; true if anything did.
    pub fn poll(&mut self, timeout: Duration) -> bool {
        let registry = &mut self.registry;
        self.follower
            .poll(timeout, &mut |k, v| registry.apply(k, v))
    }

    /// Reads until the end of the topic.
    pub fn read_to_end(&mut self, timeout: Duration) -> anyhow::Result<()> {
        let registry = &mut self.registry;
        self.follower
            .read_to_end(timeout, &mut |k, v| registry.apply(k, v))
    }
}

/// Reads the whole registry once.
pub fn read_registry(cluster: &Connection, topic: &str) -> anyhow::Result<Registry> {
    let mut r = RegistryReader::open(cluster, topic)?;
    r.read_to_end(Duration::from_secs(30))?;
    Ok(r.registry)
}

/// The files a submit ships: each model, by its path relative to the SQL
/// file as the SQL names it (normalised: `a/../b` is `b`; it may start with
/// `..`). A worker places the SQL file deep enough in the job's directory
/// that every such path lands inside it (see `worker::materialize`). A model
/// named by an absolute path is refused: it could not be placed the same way.
pub fn job_files(sql_path: &Path, models: &[PathBuf]) -> anyhow::Result<Vec<(String, Vec<u8>)>> {
    // As the planner joins them (`weir submit p.sql` has the parent "").
    let dir = sql_path.parent().unwrap_or(Path::new("."));
    let mut files = Vec::new();
    for m in models {
        let rel = m.strip_prefix(dir).map_err(|_| {
            anyhow::anyhow!(
                "model {} is named by an absolute path: a cluster job ships its models at their \
                 paths relative to the SQL file, so name it relative to {}",
                m.display(),
                dir.display()
            )
        })?;
        let rel =
            normalize(rel).with_context(|| format!("model path {} is not UTF-8", rel.display()))?;
        let bytes = std::fs::read(m).with_context(|| format!("reading {}", m.display()))?;
        files.push((rel, bytes));
    }
    Ok(files)
}

/// `a/./b/../c` -> `a/c`; leading `..`s stay.
fn normalize(path: &Path) -> Option<String> {
    let mut parts: Vec<&str> = Vec::new();
    for c in path.components() {
        match c {
            std::path::Component::Normal(p) => parts.push(p.to_str()?),
            std::path::Component::ParentDir => {
                if parts.last().is_some_and(|p| *p != "..") {
                    parts.pop();
                } else {
                    parts.push("..");
                }
            }
            _ => {}
        }
    }
    Some(parts.join("/"))
}

/// Publishes a job version (files, then the spec) and tombstones the chunks
/// of versions it replaces.
pub fn publish(
    cluster: &Connection,
    topic: &str,
    mut spec: JobSpec,
    files: &[(String, Vec<u8>)],
) -> anyhow::Result<JobSpec> {
    let previous = read_registry(cluster, topic)?;
    let sink = Sink::new(&producer_config(cluster, &BTreeMap::new()))?;
    spec.files.clear();
    for (i, (path, bytes)) in files.iter().enumerate() {
        let chunks: Vec<&[u8]> = if bytes.is_empty() {
            vec![&[][..]]
        } else {
            bytes.chunks(CHUNK_BYTES).collect()
        };
        for (c, chunk) in chunks.iter().enumerate() {
            let key = chunk_key(&spec.name, &spec.version, i, c as u32);
            sink.send_to(topic, 0, key.as_bytes(), Some(chunk))?;
        }
        spec.files.push(JobFile {
            path: path.clone(),
            bytes: bytes.len() as u64,
            chunks: chunks.len() as u32,
            blake3: blake3::hash(bytes).to_hex().to_string(),
        });
    }
    write_spec(&sink, topic, &spec)?;
    // Chunks of the replaced version (and any left by an interrupted submit).
    let mut after = previous;
    after.jobs.insert(spec.name.clone(), spec.clone());
    for key in after.orphan_chunks() {
        if key.starts_with(&format!("file/{}/", spec.name)) {
            sink.send_to(topic, 0, key.as_bytes(), None)?;
        }
    }
    sink.flush()?;
    Ok(spec)
}

fn write_spec(sink: &Sink, topic: &str, spec: &JobSpec) -> anyhow::Result<()> {
    let value = serde_json::to_vec(spec)?;
    sink.send_to(topic, 0, job_key(&spec.name).as_bytes(), Some(&value))
}

/// Marks a job stopped (every worker stops its tasks after a final checkpoint).
pub fn set_state(
    cluster: &Connection,
    topic: &str,
    name: &str,
    state: JobState,
) -> anyhow::Result<()> {
    let registry = read_registry(cluster, topic)?;
    let Some(spec) = registry.jobs.get(name) else {
        let known: Vec<&str> = registry.jobs.keys().map(String::as_str).collect();
        bail!(
            "no job named '{name}' in the registry '{topic}' (jobs: {})",
            if known.is_empty() {
                "none".to_owned()
            } else {
                known.join(", ")
            }
        );
    };
    let mut spec = spec.clone();
    spec.state = state;
    let sink = Sink::new(&producer_config(cluster, &BTreeMap::new()))?;
    write_spec(&sink, topic, &spec)?;
    sink.flush()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(version: &str) -> JobSpec {
        JobSpec {
            name: "j".into(),
            version: version.into(),
            state: JobState::Running,
            sql_file: "p.sql".into(),
            sql: "".into(),
            env: BTreeMap::new(),
            files: vec![JobFile {
                path: "m.onnx".into(),
                bytes: 5,
                chunks: 2,
                blake3: blake3::hash(b"hello").to_hex().to_string(),
            }],
            submitted_at_ms: 0,
        }
    }

    #[test]
    fn model_paths_are_relative_to_the_sql_file() {
        assert_eq!(normalize(Path::new("m.onnx")).unwrap(), "m.onnx");
        assert_eq!(normalize(Path::new("./a/../b/m.onnx")).unwrap(), "b/m.onnx");
        assert_eq!(
            normalize(Path::new("../../x/./m.onnx")).unwrap(),
            "../../x/m.onnx"
        );
        assert_eq!(normalize(Path::new("a/../../m.onnx")).unwrap(), "../m.onnx");
    }

    #[test]
    fn files_come_back_from_chunks_and_are_checked() {
        let mut r = Registry::default();
        r.apply(b"file/j/v1/0/0", Some(b"hel"));
        r.apply(b"file/j/v1/0/1", Some(b"lo"));
        let s = spec("v1");
        r.apply(b"job/j", Some(&serde_json::to_vec(&s).unwrap()));
        assert_eq!(r.file(&s, 0).unwrap(), b"hello");
        assert!(r.orphan_chunks().is_empty());
        // A corrupted chunk is refused.
        r.apply(b"file/j/v1/0/1", Some(b"lp"));
        assert!(r.file(&s, 0).is_err());
        // A newer version leaves the older chunks orphaned; a tombstone drops a job.
        r.apply(b"job/j", Some(&serde_json::to_vec(&spec("v2")).unwrap()));
        assert_eq!(r.orphan_chunks().len(), 2);
        r.apply(b"job/j", None);
        assert!(r.jobs.is_empty());
    }

    #[test]
    fn job_names_and_versions_cannot_reach_a_path() {
        for good in ["fraud", "fraud-v2.1_b", "1776000000000-00ab12cd", "a..b"] {
            assert_eq!(check_name("name", good), Ok(()), "{good}");
        }
        let long = "x".repeat(MAX_NAME + 1);
        for bad in [
            "", ".", "..", "../etc", "a/b", "a\\b", "/abs", "a b", "a\0b", "é", &long,
        ] {
            assert!(check_name("name", bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn a_registry_record_with_a_hostile_name_or_version_is_refused() {
        let mut r = Registry::default();
        let hostile = |name: &str, version: &str| JobSpec {
            name: name.into(),
            ..spec(version)
        };
        let record = |s: &JobSpec| serde_json::to_vec(s).unwrap();
        r.apply(b"job/../x", Some(&record(&hostile("../x", "v1"))));
        r.apply(b"job/j", Some(&record(&hostile("j", "../../v"))));
        // The key and the record disagree about the job's name.
        r.apply(b"job/j", Some(&record(&hostile("k", "v1"))));
        assert!(r.jobs.is_empty(), "{:?}", r.jobs.keys());
        // A good record is taken in, and a hostile one for the same key
        // removes it rather than keep a job the registry no longer holds.
        r.apply(b"job/j", Some(&record(&spec("v1"))));
        assert_eq!(r.jobs.len(), 1);
        r.apply(b"job/j", Some(&record(&hostile("j", "a/b"))));
        assert!(r.jobs.is_empty());
    }
}

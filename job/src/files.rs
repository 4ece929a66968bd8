//! The filesystem source (`'connector' = 'filesystem'`): one record per line
//! of a file, or of every file under a directory, read once (bounded), as
//! backfills and benchmarks against file-reading engines want.
//!
//! ```text
//! path --list--> files (a directory: every regular file below it, by path;
//!                names starting with '.' or '_' skipped, as Hadoop and Flink do)
//!      --read--> lines (blank ones skipped) --> the source task, as partition 0
//! ```
//!
//! A record's offset is its place: the file's index in that list (upper 23
//! bits) and its 0-based line number in the file (lower 40). Offsets rise
//! through the input, and offset + 1 names the line after a record, so a
//! checkpoint's next offset is where a restarted run resumes, like a Kafka
//! partition's. The list of files (names and sizes) is part of the plan's
//! fingerprint: state written over other files is refused rather than resumed
//! at the wrong line.

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};
use weir_operators::RecordMeta;

use crate::records::RawBatch;

/// Bits of an offset that hold the line number.
pub const LINE_BITS: u32 = 40;
const LINE_MASK: i64 = (1 << LINE_BITS) - 1;
const READ_BUFFER: usize = 1 << 20;

/// The files a filesystem table reads, in the order it reads them.
pub fn list(path: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let meta = std::fs::metadata(path).with_context(|| format!("reading '{}'", path.display()))?;
    if meta.is_file() {
        return Ok(vec![path.to_path_buf()]);
    }
    let mut files = Vec::new();
    let mut dirs = vec![path.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        for entry in
            std::fs::read_dir(&dir).with_context(|| format!("listing '{}'", dir.display()))?
        {
            let entry = entry.with_context(|| format!("listing '{}'", dir.display()))?;
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if name.starts_with('.') || name.starts_with('_') {
                continue;
            }
            let kind = entry.file_type()?;
            let p = entry.path();
            // Symbolic links are followed.
            let kind_of = if kind.is_symlink() {
                std::fs::metadata(&p).map(|m| m.file_type()).ok()
            } else {
                Some(kind)
            };
            match kind_of {
                Some(k) if k.is_dir() => dirs.push(p),
                Some(k) if k.is_file() => files.push(p),
                _ => {}
            }
        }
    }
    files.sort();
    if files.len() as u64 >= 1 << (63 - LINE_BITS) {
        bail!(
            "'{}' holds {} files; a filesystem table reads at most {}",
            path.display(),
            files.len(),
            (1u64 << (63 - LINE_BITS)) - 1
        );
    }
    Ok(files)
}

/// What identifies the input for the plan's fingerprint: each file's path
/// and size.
pub fn fingerprint(files: &[PathBuf]) -> anyhow::Result<Vec<u8>> {
    let mut out = Vec::new();
    for f in files {
        let size = std::fs::metadata(f)
            .with_context(|| format!("reading '{}'", f.display()))?
            .len();
        out.extend_from_slice(f.as_os_str().as_encoded_bytes());
        out.push(0);
        out.extend_from_slice(&size.to_be_bytes());
    }
    Ok(out)
}

pub fn offset(file: usize, line: i64) -> i64 {
    ((file as i64) << LINE_BITS) | line
}

/// The file and 1-based line number an offset names.
pub fn locate(files: &[PathBuf], offset: i64) -> (String, i64) {
    let file = (offset >> LINE_BITS) as usize;
    let name = files
        .get(file)
        .map(|f| f.display().to_string())
        .unwrap_or_else(|| format!("file #{file}"));
    (name, (offset & LINE_MASK) + 1)
}

/// Reads the files' lines in order, from a position.
pub struct FileInput {
    files: Vec<PathBuf>,
    /// The file being read (`files.len()` at the end) and its reader.
    file: usize,
    reader: Option<BufReader<File>>,
    /// The number of the next line of `file`.
    line: i64,
}

impl FileInput {
    /// Positioned at `next` (an offset as `offset` makes it; 0 is the start).
    pub fn open(files: Vec<PathBuf>, next: i64) -> anyhow::Result<Self> {
        let mut input = Self {
            files,
            file: (next >> LINE_BITS) as usize,
            reader: None,
            line: 0,
        };
        let skip = next & LINE_MASK;
        if input.file < input.files.len() {
            input.open_current()?;
            let mut scratch = Vec::new();
            while input.line < skip {
                scratch.clear();
                let r = input.reader.as_mut().expect("opened above");
                if r.read_until(b'\n', &mut scratch)
                    .with_context(|| input.context())?
                    == 0
                {
                    bail!(
                        "cannot resume '{}' at line {}: it has {} lines (did the file change since the checkpoint?)",
                        input.files[input.file].display(),
                        skip + 1,
                        input.line
                    );
                }
                input.line += 1;
            }
        }
        Ok(input)
    }

    fn open_current(&mut self) -> anyhow::Result<()> {
        let path = &self.files[self.file];
        let f = File::open(path).with_context(|| format!("opening '{}'", path.display()))?;
        self.reader = Some(BufReader::with_capacity(READ_BUFFER, f));
        self.line = 0;
        Ok(())
    }

    fn context(&self) -> String {
        format!(
            "reading '{}' at line {}",
            self.files[self.file].display(),
            self.line + 1
        )
    }

    /// Appends up to `max` records (lines that are not blank) to `batch`.
    /// Returns false once every file is read.
    pub fn read(&mut self, max: usize, batch: &mut RawBatch) -> anyhow::Result<bool> {
        let RawBatch { buf, spans, metas } = batch;
        let mut taken = 0;
        while taken < max {
            if self.file >= self.files.len() {
                return Ok(false);
            }
            if self.reader.is_none() {
                self.open_current()?;
            }
            let start = buf.len();
            let reader = self.reader.as_mut().expect("opened above");
            let n = match reader.read_until(b'\n', buf) {
                Ok(n) => n,
                Err(e) => {
                    buf.truncate(start);
                    return Err(e).with_context(|| self.context());
                }
            };
            if n == 0 {
                self.reader = None;
                self.file += 1;
                self.line = 0;
                continue;
            }
            let line = self.line;
            self.line += 1;
            if line > LINE_MASK {
                bail!(
                    "'{}' has more than {} lines",
                    self.files[self.file].display(),
                    LINE_MASK
                );
            }
            let mut end = buf.len();
            while end > start && matches!(buf[end - 1], b'\n' | b'\r') {
                end -= 1;
            }
            if buf[start..end].iter().all(u8::is_ascii_whitespace) {
                buf.truncate(start);
                continue;
            }
            buf.truncate(end);
            buf.push(b'\n');
            spans.push((start, end));
            metas.push(RecordMeta {
                partition: 0,
                offset: offset(self.file, line),
                timestamp: None,
                key: None,
            });
            taken += 1;
        }
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read_all(input: &mut FileInput, max: usize) -> Vec<(String, i64)> {
        let mut out = Vec::new();
        loop {
            let mut batch = RawBatch::default();
            let more = input.read(max, &mut batch).unwrap();
            let RawBatch { buf, spans, metas } = &batch;
            for ((s, e), m) in spans.iter().zip(metas.iter()) {
                assert_eq!(buf[*e], b'\n');
                out.push((String::from_utf8(buf[*s..*e].to_vec()).unwrap(), m.offset));
            }
            if !more {
                return out;
            }
        }
    }

    #[test]
    fn a_directory_is_read_in_path_order_skipping_hidden_files_and_blank_lines() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("b")).unwrap();
        std::fs::write(dir.path().join("b/2.jsonl"), "c\r\n\n  \nd").unwrap();
        std::fs::write(dir.path().join("a.jsonl"), "a\nb\n").unwrap();
        std::fs::write(dir.path().join(".a.jsonl.crc"), "x\n").unwrap();
        std::fs::write(dir.path().join("_SUCCESS"), "x\n").unwrap();
        let files = list(dir.path()).unwrap();
        assert_eq!(files.len(), 2);
        let mut input = FileInput::open(files.clone(), 0).unwrap();
        let got = read_all(&mut input, 2);
        assert_eq!(
            got,
            vec![
                ("a".into(), 0),
                ("b".into(), 1),
                ("c".into(), 1 << LINE_BITS),
                ("d".into(), (1 << LINE_BITS) | 3),
            ]
        );
        assert_eq!(
            locate(&files, (1 << LINE_BITS) | 3),
            (files[1].display().to_string(), 4)
        );
    }

    #[test]
    fn a_run_resumes_at_the_line_after_the_last_one_processed() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("0"), "a\nb\nc\n").unwrap();
        std::fs::write(dir.path().join("1"), "d\ne\n").unwrap();
        let files = list(dir.path()).unwrap();
        let all = read_all(&mut FileInput::open(files.clone(), 0).unwrap(), 100);
        for (i, (_, offset)) in all.iter().enumerate() {
            let rest = read_all(&mut FileInput::open(files.clone(), offset + 1).unwrap(), 1);
            assert_eq!(rest, all[i + 1..].to_vec(), "resuming after record {i}");
        }
        // A position past a file's last line moves on to the next file.
        let rest = read_all(&mut FileInput::open(files.clone(), 3).unwrap(), 10);
        assert_eq!(rest, all[3..].to_vec());
        // One beyond a file's end means the file changed.
        let err = FileInput::open(files, 5).err().unwrap().to_string();
        assert!(err.contains("at line 6"), "{err}");
    }

    #[test]
    fn the_fingerprint_changes_with_a_file() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("0"), "a\n").unwrap();
        let before = fingerprint(&list(dir.path()).unwrap()).unwrap();
        std::fs::write(dir.path().join("0"), "a\nb\n").unwrap();
        assert_ne!(before, fingerprint(&list(dir.path()).unwrap()).unwrap());
    }
}

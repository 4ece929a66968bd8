//! The text of a pipeline file, with the position bookkeeping every error needs.
//!
//! Queries inside the file are handed to the SQL parser as the *whole file* with
//! everything outside the query blanked to spaces (newlines kept). That way every
//! position the parser reports is already a position in the file, with no offset
//! arithmetic to get wrong.

use std::ops::Range;
use std::path::{Path, PathBuf};

use datafusion::sql::sqlparser::tokenizer::Location;

use crate::error::{Located, PlanError, Pos};

pub struct SqlFile {
    path: PathBuf,
    chars: Vec<char>,
    /// Char index of the first char of each line.
    line_starts: Vec<usize>,
}

impl SqlFile {
    pub fn new(path: impl Into<PathBuf>, text: &str) -> Self {
        let chars: Vec<char> = text.chars().collect();
        let mut line_starts = vec![0];
        for (i, c) in chars.iter().enumerate() {
            if *c == '\n' {
                line_starts.push(i + 1);
            }
        }
        Self {
            path: path.into(),
            chars,
            line_starts,
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn text(&self) -> String {
        self.chars.iter().collect()
    }

    /// Char index of a tokenizer location.
    pub fn index(&self, loc: Location) -> usize {
        let line = (loc.line.max(1) - 1) as usize;
        let start = self
            .line_starts
            .get(line)
            .copied()
            .unwrap_or(self.chars.len());
        (start + loc.column.max(1) as usize - 1).min(self.chars.len())
    }

    pub fn pos_of_index(&self, index: usize) -> Pos {
        let line = match self.line_starts.binary_search(&index) {
            Ok(l) => l,
            Err(l) => l - 1,
        };
        Pos::new(line as u64 + 1, (index - self.line_starts[line]) as u64 + 1)
    }

    pub fn slice(&self, range: Range<usize>) -> String {
        self.chars[range].iter().collect()
    }

    /// The file with everything outside `keep` blanked, and each replacement
    /// `(range, text)` written over its range (padded with spaces, newlines kept),
    /// so positions in the result are positions in the file.
    pub fn masked(&self, keep: Range<usize>, replacements: &[(Range<usize>, String)]) -> String {
        let mut out: Vec<char> = self
            .chars
            .iter()
            .enumerate()
            .map(|(i, &c)| {
                if c == '\n' || c == '\r' || keep.contains(&i) {
                    c
                } else {
                    ' '
                }
            })
            .collect();
        for (range, text) in replacements {
            let mut replacement = text.chars();
            for slot in &mut out[range.clone()] {
                if *slot == '\n' || *slot == '\r' {
                    continue;
                }
                *slot = replacement.next().unwrap_or(' ');
            }
        }
        out.into_iter().collect()
    }

    pub fn error(&self, located: Located) -> PlanError {
        PlanError {
            file: self.path.clone(),
            pos: located.pos,
            message: located.message,
        }
    }
}

pub fn pos(loc: Location) -> Pos {
    Pos::new(loc.line, loc.column)
}

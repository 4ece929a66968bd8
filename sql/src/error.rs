//! Plan-time errors that point at a place in the pipeline file.

use std::fmt;
use std::path::PathBuf;

/// A position in a pipeline file: 1-based line and column (in characters).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct Pos {
    pub line: u64,
    pub column: u64,
}

impl Pos {
    pub fn new(line: u64, column: u64) -> Self {
        Self { line, column }
    }
}

/// An error in a pipeline file. Displayed as `file:line:col: message`, the form
/// editors and terminals turn into a link.
#[derive(Debug, Clone, thiserror::Error)]
pub struct PlanError {
    pub file: PathBuf,
    pub pos: Pos,
    pub message: String,
}

impl fmt::Display for PlanError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}:{}: {}",
            self.file.display(),
            self.pos.line,
            self.pos.column,
            self.message
        )
    }
}

/// Errors before they are tied to a file: a position and a message.
#[derive(Debug, Clone)]
pub struct Located {
    pub pos: Pos,
    pub message: String,
}

impl Located {
    pub fn new(pos: Pos, message: impl Into<String>) -> Self {
        Self {
            pos,
            message: message.into(),
        }
    }
}

pub type LResult<T> = Result<T, Located>;

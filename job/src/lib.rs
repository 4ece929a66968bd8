//! weir: the binary's library. CLI commands, the task runtime that moves
//! records between Kafka and a flow's operators, the embedded broker, and the
//! example's data generator.
//!
//! ```text
//! weir run file.sql
//!   load  : read + plan (weir-sql) + load models (tract)      -- errors before any data moves
//!   kafka : connect, create missing sink/dead-letter topics
//!   tasks : one thread per source table
//!           poll -> decode -> watermark -> chain (weir-operators) -> encode -> produce
//! ```
//!
//! What it is for: running plans. What it is not for: SQL (weir-sql) or per-batch
//! operator logic (weir-operators).

pub mod changelog;
pub mod cluster;
pub mod connection;
pub mod counters;
pub mod embedded;
pub mod files;
pub mod generate;
pub mod kafka;
pub mod load;
pub mod printer;
pub mod records;
pub mod run;
pub mod shuffle;
pub mod sink;
pub mod table;
pub mod task;
pub mod topics;

pub use load::{LoadedPipeline, load_pipeline, plan_text};
pub use run::{RunOptions, RunSummary, SourceSummary, run_pipeline};

//! weir-operators: the streaming operators a flow runs, each over Arrow
//! `RecordBatch`es.
//!
//! ```text
//! Kafka records --decode--> Batch --[window columns]--> filter/project (PhysicalExpr)
//!     --> lookup join (a table read from a compacted topic, by key [as of event time])
//!     --> window aggregate (GroupsAccumulator per open pane), session or OVER (sliding accumulators per key)
//!     --> filter/project
//!     --> predict (one tract run per batch, inside the projection) --encode--> Kafka records
//! ```
//!
//! What it is for: the per-batch work between a Kafka fetch and a Kafka produce,
//! built from a [`weir_sql::Flow`]. What it is not for: Kafka I/O, threads, or
//! the job's lifecycle (that is the `weir` crate).

pub mod build;
pub mod chain;
pub mod decode;
pub mod encode;
pub mod ids;
pub mod lookup;
pub mod operator;
pub mod over;
pub mod predict;
pub mod stateless;
pub mod trees;
pub mod watermark;
pub mod window;

pub use build::build_chain;
pub use chain::Chain;
pub use decode::{BadRecord, JsonDecoder, RecordMeta};
pub use encode::{EncodedBatch, JsonEncoder};
pub use operator::{Batch, Context, Operator, StateAttachment, TableChanges};
pub use predict::{Model, TractInspector};
pub use watermark::WatermarkTracker;

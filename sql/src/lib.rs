//! weir-sql: a pipeline file's SQL text -> catalog -> logical dataflow plan.
//!
//! ```text
//! pipeline.sql --statement--> SET / CREATE TABLE / CREATE MODEL / CREATE VIEW / INSERT
//!              --catalog----> Kafka tables (options validated), models, settings
//!              --planner----> DataFusion LogicalPlan per query --lower--> Flow (stages)
//! ```
//!
//! What it is for: turning SQL into a [`PipelinePlan`] whose errors name the file,
//! line and column. What it is not for: running anything. It does no network I/O,
//! knows nothing of Kafka clients or RocksDB, and reads model metadata only
//! through the [`ModelInspector`] trait its caller provides.

pub mod catalog;
pub mod error;
pub mod plan;
pub mod planner;
mod predict;
pub mod source;
pub mod statement;
pub mod subst;

pub use catalog::{
    Column, DeliveryGuarantee, Format, KafkaTable, LatePolicy, MetadataKind, ModelDef, ModelInfo,
    ModelInspector, ModelKind, StartupMode, Watermark,
};
pub use error::{PlanError, Pos};
pub use plan::{
    Flow, GroupKey, LookupJoin, LookupKind, OverAggregate, OverCall, OverFrame, OverFunction,
    PipelinePlan, Stage, WindowAggregate,
};
pub use planner::{WINDOW_END, WINDOW_START, WINDOW_TIME, plan_pipeline};
pub use predict::{PREDICT, predict_model};
pub use statement::WindowKind;

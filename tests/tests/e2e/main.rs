//! weir's end-to-end and state tests, in one test binary: each binary links
//! DataFusion, RocksDB, librdkafka and tract, and linking dominates the
//! build. The golden cases are a binary of their own (tests/tests/golden.rs).
//!
//! `cargo test --release -p weir-tests --test e2e crash::` runs one module.
//!
//! Tests that were alone in their process before the merge, because they
//! spawn `weir` processes, kill them on timers, time a broker outage or a
//! lease, or load the machine for minutes, still run alone: they hold
//! [`exclusive`]. Every other test holds [`shared`], and those run in
//! parallel with each other as before.

use std::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard};

mod alignment;
mod broker_outage;
mod cluster;
mod cluster_repartition;
mod cluster_stateless;
mod compression;
mod crash;
mod dead_letters;
mod delivery;
mod example_features;
mod file_source;
mod handover;
mod join_hold;
mod over_state;
mod predict;
mod registry;
mod secured;
mod session_state;
mod state_scale;
mod transactions;
mod window_restore;
mod window_time_range;

static ALONE: RwLock<()> = RwLock::new(());

/// Held by a test that must not run beside any other.
pub fn exclusive() -> RwLockWriteGuard<'static, ()> {
    ALONE.write().unwrap_or_else(|e| e.into_inner())
}

/// Held by a test that may run beside others of its kind.
pub fn shared() -> RwLockReadGuard<'static, ()> {
    ALONE.read().unwrap_or_else(|e| e.into_inner())
}

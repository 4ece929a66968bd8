//! What DataFusion's SQL planner sees of a pipeline file: its tables, views
//! and window TVFs as table sources, DataFusion's functions plus `predict`,
//! and the parser options the planner set.

use std::collections::HashMap;
use std::sync::Arc;

use datafusion::arrow::datatypes::DataType;
use datafusion::common::{DataFusionError, TableReference};
use datafusion::config::ConfigOptions;
use datafusion::execution::session_state::SessionState;
use datafusion::logical_expr::planner::{ContextProvider, ExprPlanner};
use datafusion::logical_expr::{AggregateUDF, ScalarUDF, TableSource, WindowUDF};

pub(super) struct Provider {
    pub(super) state: SessionState,
    pub(super) udfs: HashMap<String, Arc<ScalarUDF>>,
    pub(super) tables: HashMap<String, Arc<dyn TableSource>>,
    pub(super) options: ConfigOptions,
}

impl ContextProvider for Provider {
    fn get_table_source(
        &self,
        name: TableReference,
    ) -> datafusion::common::Result<Arc<dyn TableSource>> {
        self.tables
            .get(name.table())
            .cloned()
            .ok_or_else(|| DataFusionError::Plan(format!("table '{}' not found", name.table())))
    }
    fn get_function_meta(&self, name: &str) -> Option<Arc<ScalarUDF>> {
        self.udfs.get(name).cloned()
    }
    fn get_higher_order_meta(
        &self,
        _name: &str,
    ) -> Option<Arc<datafusion::logical_expr::HigherOrderUDF>> {
        None
    }
    fn get_aggregate_meta(&self, name: &str) -> Option<Arc<AggregateUDF>> {
        // `variance` is var_samp in Flink, PostgreSQL and DuckDB.
        let name = if name == "variance" { "var_samp" } else { name };
        self.state.aggregate_functions().get(name).cloned()
    }
    fn get_window_meta(&self, name: &str) -> Option<Arc<WindowUDF>> {
        self.state.window_functions().get(name).cloned()
    }
    fn get_variable_type(&self, _names: &[String]) -> Option<DataType> {
        None
    }
    fn options(&self) -> &ConfigOptions {
        &self.options
    }
    fn udf_names(&self) -> Vec<String> {
        self.udfs.keys().cloned().collect()
    }
    fn udaf_names(&self) -> Vec<String> {
        self.state.aggregate_functions().keys().cloned().collect()
    }
    fn higher_order_function_names(&self) -> Vec<String> {
        vec![]
    }
    fn udwf_names(&self) -> Vec<String> {
        self.state.window_functions().keys().cloned().collect()
    }
    fn get_expr_planners(&self) -> &[Arc<dyn ExprPlanner>] {
        self.state.expr_planners()
    }
}

//! Reading and planning a pipeline file, and loading its models: everything
//! that can fail before any data moves.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use anyhow::Context as _;
use weir_operators::{Model, TractInspector};
use weir_sql::PipelinePlan;

pub struct LoadedPipeline {
    pub plan: PipelinePlan,
    pub models: HashMap<String, Arc<Model>>,
}

/// Plans `text` as if read from `path`; `env` resolves `${VAR}`s.
pub fn plan_text(
    path: &Path,
    text: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<PipelinePlan, weir_sql::PlanError> {
    weir_sql::plan_pipeline(path, text, env, &TractInspector)
}

/// Reads, plans and loads a pipeline file.
pub fn load_pipeline(
    path: &Path,
    env: &dyn Fn(&str) -> Option<String>,
) -> anyhow::Result<LoadedPipeline> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let plan = plan_text(path, &text, env)?;
    let mut models = HashMap::new();
    for m in plan.models.values() {
        let model =
            Model::load(&m.name, &m.path).with_context(|| format!("loading model {}", m.name))?;
        models.insert(m.name.clone(), Arc::new(model));
    }
    Ok(LoadedPipeline { plan, models })
}

/// The process environment, for `${VAR}` substitution.
pub fn process_env(name: &str) -> Option<String> {
    std::env::var(name).ok()
}

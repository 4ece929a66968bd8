//! `predict(model, features...)`: ONNX scoring through tract, one run per batch.
//!
//! The argument columns are gathered into one contiguous row-major
//! `[rows, features]` f32 tensor, scored in runs of 1024, 256 and 64 rows
//! through plans optimized for those shapes, the rest through a plan with a
//! symbolic batch dimension. For a classifier the result is the positive-class
//! probability (the `probabilities` output, column 1); for a regressor its value.

use std::fmt;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context as _, anyhow, bail};
use datafusion::arrow::array::{Array, ArrayRef, AsArray, Float64Array};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{DataType, Float32Type};
use datafusion::common::{DataFusionError, Result as DfResult};
use datafusion::logical_expr::{
    ColumnarValue, ScalarFunctionArgs, ScalarUDFImpl, Signature, Volatility,
};
use tract_onnx::prelude::*;
use tract_onnx::tract_hir::infer::Factoid;
use tract_onnx::tract_hir::internal::DimLike;
use weir_sql::{ModelInfo, ModelInspector, ModelKind};

type Plan = Arc<TypedRunnableModel>;
/// Plans for a fixed number of rows, largest first.
type FixedPlans = Vec<(usize, Plan)>;

/// A loaded, optimized model.
pub struct Model {
    name: String,
    path: PathBuf,
    /// For any number of rows (a symbolic batch dimension).
    plan: Plan,
    /// Plans for fixed numbers of rows, largest first (`FIXED_ROWS`): with
    /// concrete shapes tract picks its kernels ahead of time, and small dense
    /// layers run 2-3x faster than through the symbolic plan.
    fixed: FixedPlans,
    info: ModelInfo,
    stats: PredictStats,
}

/// What a model has scored, across every task sharing it (metrics).
#[derive(Debug, Default)]
pub struct PredictStats {
    /// Runs of the model (one per batch of rows).
    pub calls: std::sync::atomic::AtomicU64,
    pub rows: std::sync::atomic::AtomicU64,
    /// Time spent in runs, in nanoseconds.
    pub nanos: std::sync::atomic::AtomicU64,
}

impl fmt::Debug for Model {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Model({} from {})", self.name, self.path.display())
    }
}

impl Model {
    pub fn load(name: &str, path: &Path) -> anyhow::Result<Self> {
        let (plan, fixed, info) = load_plan(path, true)?;
        Ok(Self {
            name: name.to_string(),
            path: path.to_path_buf(),
            plan,
            fixed,
            info,
            stats: PredictStats::default(),
        })
    }

    pub fn info(&self) -> &ModelInfo {
        &self.info
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn stats(&self) -> &PredictStats {
        &self.stats
    }

    /// Scores `rows` rows of `features` (row-major, `rows * inputs` values).
    pub fn score(&self, features: Vec<f32>, rows: usize) -> anyhow::Result<Vec<f64>> {
        let width = self.info.inputs;
        if rows == 0 {
            return Ok(Vec::new());
        }
        let started = std::time::Instant::now();
        let mut scores = Vec::with_capacity(rows);
        // Runs of the largest fixed sizes that fit, the rest symbolically.
        let mut at = 0;
        for (n, plan) in &self.fixed {
            while rows - at >= *n {
                self.run(
                    plan,
                    &features[at * width..(at + n) * width],
                    *n,
                    &mut scores,
                )?;
                at += n;
            }
        }
        if at < rows {
            self.run(&self.plan, &features[at * width..], rows - at, &mut scores)?;
        }
        {
            use std::sync::atomic::Ordering::Relaxed;
            self.stats.calls.fetch_add(1, Relaxed);
            self.stats.rows.fetch_add(rows as u64, Relaxed);
            self.stats
                .nanos
                .fetch_add(started.elapsed().as_nanos() as u64, Relaxed);
        }
        Ok(scores)
    }

    /// Runs `plan` on `rows` rows, appending their scores to `out`.
    fn run(
        &self,
        plan: &Plan,
        features: &[f32],
        rows: usize,
        out: &mut Vec<f64>,
    ) -> anyhow::Result<()> {
        let input = Tensor::from_shape(&[rows, self.info.inputs], features)?;
        let outputs = plan.run(tvec!(input.into()))?;
        let out_tensor = outputs[0].cast_to::<f32>()?;
        let view = out_tensor.to_plain_array_view::<f32>()?;
        let shape = view.shape().to_vec();
        match (self.info.kind, shape.as_slice()) {
            (ModelKind::Classifier, [r, c]) if *r == rows && *c >= 2 => {
                out.extend((0..rows).map(|i| view[[i, 1]] as f64));
                Ok(())
            }
            (ModelKind::Regressor, [r]) | (ModelKind::Regressor, [r, 1]) if *r == rows => {
                out.extend(view.iter().map(|v| *v as f64));
                Ok(())
            }
            _ => bail!(
                "model {} returned an output of shape {:?} for {rows} rows",
                self.name,
                shape
            ),
        }
    }
}

/// The row counts a model gets a fixed-size plan for. Measured on the MLPs
/// of bench/scoring at batch 1024 (criterion, `score/mlp`): the symbolic plan
/// 4.4M rows/s, 256-row plans 5.8M, one 1024-row plan 9.6M.
/// `WEIR_PREDICT_FIXED=0` turns them off (to compare).
const FIXED_ROWS: &[usize] = &[1024, 256, 64];

fn fixed_rows() -> &'static [usize] {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    if *ON.get_or_init(|| std::env::var("WEIR_PREDICT_FIXED").as_deref() != Ok("0")) {
        FIXED_ROWS
    } else {
        &[]
    }
}

/// The symbolic plan, the fixed-size ones (with `fixed`), what the model is.
fn load_plan(path: &Path, fixed: bool) -> anyhow::Result<(Plan, FixedPlans, ModelInfo)> {
    if !path.exists() {
        bail!("no such file");
    }
    let mut onnx = tract_onnx::onnx();
    crate::trees::register(&mut onnx.op_register);
    let mut model = onnx
        .model_for_path(path)
        .with_context(|| format!("reading ONNX model {}", path.display()))?;
    if model.inputs.len() != 1 {
        bail!(
            "the model has {} inputs; weir feeds one [rows, features] float tensor",
            model.inputs.len()
        );
    }
    let input_fact = model.input_fact(0)?.clone();
    let dims: Vec<_> = input_fact.shape.dims().cloned().collect();
    let width = match dims.as_slice() {
        [_, w] => w
            .concretize()
            .and_then(|d| d.to_usize().ok())
            .ok_or_else(|| anyhow!("the model's feature dimension is not fixed"))?,
        _ => bail!(
            "the model's input has rank {}; weir feeds [rows, features]",
            dims.len()
        ),
    };
    // Pick the output: a classifier's probabilities, or a regressor's one output.
    let labels: Vec<String> = model
        .output_outlets()?
        .iter()
        .map(|o| model.outlet_label(*o).unwrap_or_default().to_string())
        .collect();
    let (kind, output) = if let Some(i) = labels.iter().position(|l| l.contains("probabilities")) {
        (ModelKind::Classifier, i)
    } else if labels.len() == 1 {
        (ModelKind::Regressor, 0)
    } else {
        bail!(
            "cannot tell which output to use among {:?}: weir uses a classifier's 'probabilities' or a regressor's single output",
            labels
        );
    };
    let outlet = model.output_outlets()?[output];
    model.select_output_outlets(&[outlet])?;
    let mut plans = Vec::new();
    let sizes = if fixed { fixed_rows() } else { &[] };
    for &rows in sizes {
        let mut m = model.clone();
        m.set_input_fact(0, f32::fact([rows, width]).into())?;
        let plan = m
            .into_optimized()
            .with_context(|| format!("optimizing the model with tract for {rows} rows"))?
            .into_runnable()?;
        plans.push((rows, plan));
    }
    let batch = model.symbols.sym("N");
    model.set_input_fact(
        0,
        f32::fact(&[batch.to_dim(), (width as i64).to_dim()]).into(),
    )?;
    let typed = model
        .into_optimized()
        .with_context(|| "optimizing the model with tract")?;
    let plan = typed.into_runnable()?;
    let summary = format!(
        "output '{}', {} nodes",
        labels[output],
        plan.model().nodes().len()
    );
    Ok((
        plan,
        plans,
        ModelInfo {
            inputs: width,
            kind,
            summary,
        },
    ))
}

/// Plan-time model checks through tract.
pub struct TractInspector;

impl ModelInspector for TractInspector {
    fn inspect(&self, path: &Path) -> Result<ModelInfo, String> {
        load_plan(path, false)
            .map(|(_, _, info)| info)
            .map_err(|e| format!("{e:#}"))
    }
}

/// `predict` bound to one model: what the physical expression calls.
#[derive(Debug)]
pub struct BoundPredict {
    model: Arc<Model>,
    signature: Signature,
}

impl BoundPredict {
    pub fn new(model: Arc<Model>) -> Self {
        Self {
            model,
            signature: Signature::variadic_any(Volatility::Immutable),
        }
    }
}

impl PartialEq for BoundPredict {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.model, &other.model)
    }
}
impl Eq for BoundPredict {}
impl Hash for BoundPredict {
    fn hash<H: Hasher>(&self, state: &mut H) {
        Arc::as_ptr(&self.model).hash(state)
    }
}

impl ScalarUDFImpl for BoundPredict {
    fn name(&self) -> &str {
        "predict"
    }
    fn signature(&self) -> &Signature {
        &self.signature
    }
    fn return_type(&self, _args: &[DataType]) -> DfResult<DataType> {
        Ok(DataType::Float64)
    }
    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> DfResult<ColumnarValue> {
        let rows = args.number_rows;
        let columns = args
            .args
            .into_iter()
            .map(|a| a.into_array(rows))
            .collect::<DfResult<Vec<ArrayRef>>>()?;
        let scores = score_columns(&self.model, &columns, rows).map_err(|e| {
            DataFusionError::Execution(format!("predict({}): {e:#}", self.model.name))
        })?;
        Ok(ColumnarValue::Array(Arc::new(scores)))
    }
}

/// Gathers feature columns into one tensor and scores it. A row with a null
/// feature scores as null.
pub fn score_columns(
    model: &Model,
    columns: &[ArrayRef],
    rows: usize,
) -> anyhow::Result<Float64Array> {
    let width = columns.len();
    let mut data = vec![0f32; rows * width];
    let mut valid = vec![true; rows];
    for (j, column) in columns.iter().enumerate() {
        let floats = cast(column, &DataType::Float32)?;
        let floats = floats.as_primitive::<Float32Type>();
        let values = floats.values();
        for (i, v) in values.iter().enumerate() {
            data[i * width + j] = *v;
        }
        if floats.null_count() > 0 {
            for (i, ok) in valid.iter_mut().enumerate() {
                if floats.is_null(i) {
                    *ok = false;
                }
            }
        }
    }
    let scores = model.score(data, rows)?;
    Ok(scores
        .into_iter()
        .zip(valid)
        .map(|(s, ok)| ok.then_some(s))
        .collect())
}

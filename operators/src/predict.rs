//! `predict(model, features...)`: ONNX scoring through tract, one run per batch.
//!
//! The argument columns are gathered into one contiguous row-major
//! `[rows, features]` f32 tensor and the optimized plan (with a symbolic batch
//! dimension) runs once. For a classifier the result is the positive-class
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

/// A loaded, optimized model.
pub struct Model {
    name: String,
    path: PathBuf,
    plan: Plan,
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
        let (plan, info) = load_plan(path)?;
        Ok(Self {
            name: name.to_string(),
            path: path.to_path_buf(),
            plan,
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
        let input = Tensor::from_shape(&[rows, width], &features)?;
        let outputs = self.plan.run(tvec!(input.into()))?;
        {
            use std::sync::atomic::Ordering::Relaxed;
            self.stats.calls.fetch_add(1, Relaxed);
            self.stats.rows.fetch_add(rows as u64, Relaxed);
            self.stats
                .nanos
                .fetch_add(started.elapsed().as_nanos() as u64, Relaxed);
        }
        let out = outputs[0].cast_to::<f32>()?;
        let view = out.to_plain_array_view::<f32>()?;
        let shape = view.shape().to_vec();
        match (self.info.kind, shape.as_slice()) {
            (ModelKind::Classifier, [r, c]) if *r == rows && *c >= 2 => {
                Ok((0..rows).map(|i| view[[i, 1]] as f64).collect())
            }
            (ModelKind::Regressor, [r]) if *r == rows => {
                Ok(view.iter().map(|v| *v as f64).collect())
            }
            (ModelKind::Regressor, [r, 1]) if *r == rows => {
                Ok(view.iter().map(|v| *v as f64).collect())
            }
            _ => bail!(
                "model {} returned an output of shape {:?} for {rows} rows",
                self.name,
                shape
            ),
        }
    }
}

fn load_plan(path: &Path) -> anyhow::Result<(Plan, ModelInfo)> {
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
        load_plan(path)
            .map(|(_, info)| info)
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

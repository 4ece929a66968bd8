//! `predict(model, features...)`: the function name, how to read the model a
//! planned call names, and the placeholder UDF DataFusion plans the call with.
//! Both the planner (which binds calls) and the plan's display (which lists
//! them) depend on it.

use datafusion::arrow::datatypes::DataType;
use datafusion::common::{DataFusionError, ScalarValue};
use datafusion::logical_expr::{ColumnarValue, Expr, ScalarFunctionArgs, ScalarUDFImpl, Signature};

/// The model name of a `predict(model, ...)` call, if `e` is one.
pub fn predict_model(e: &Expr) -> Option<&str> {
    match e {
        Expr::ScalarFunction(f) if f.func.name() == PREDICT => match f.args.first() {
            Some(Expr::Literal(ScalarValue::Utf8(Some(name)), _)) => Some(name.as_str()),
            _ => None,
        },
        _ => None,
    }
}

pub const PREDICT: &str = "predict";

/// `predict` as the planner sees it: any arguments, a DOUBLE result. weir-operators
/// binds each call to its model before anything runs.
#[derive(Debug, PartialEq, Eq, Hash)]
pub(crate) struct PredictPlaceholder {
    pub(crate) signature: Signature,
}

impl ScalarUDFImpl for PredictPlaceholder {
    fn name(&self) -> &str {
        PREDICT
    }
    fn signature(&self) -> &Signature {
        &self.signature
    }
    fn return_type(&self, _args: &[DataType]) -> datafusion::common::Result<DataType> {
        Ok(DataType::Float64)
    }
    fn invoke_with_args(
        &self,
        _args: ScalarFunctionArgs,
    ) -> datafusion::common::Result<ColumnarValue> {
        Err(DataFusionError::Internal(
            "predict must be bound to its model before it runs".into(),
        ))
    }
}

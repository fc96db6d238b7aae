//! SQL compiled once into DataFusion physical expressions, evaluated per batch.
//!
//! Planning a query costs far more than evaluating a few expressions over a
//! batch, so every SQL text in a pipeline (transform statements, rules,
//! derived fields) is planned when the stage is built and evaluated with
//! `PhysicalExpr::evaluate` afterwards. `now()` is fixed when the stage is built.

use std::sync::Arc;

use arrow::array::{Array, ArrayRef, BooleanArray, RecordBatch};
use arrow::compute::concat;
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::common::DFSchema;
use datafusion::datasource::MemTable;
use datafusion::logical_expr::LogicalPlan;
use datafusion::logical_expr::simplify::SimplifyContext;
use datafusion::optimizer::simplify_expressions::ExprSimplifier;
use datafusion::physical_expr::PhysicalExpr;
use datafusion::prelude::{Expr, SessionConfig, SessionContext};

use crate::StageError;

/// SQL that cannot be used where it was written.
#[derive(Debug, thiserror::Error)]
pub enum SqlError {
    /// DataFusion could not parse or plan it against the input schema.
    #[error("{0}")]
    Plan(String),
    /// The statement is not a row-for-row projection of `input`.
    #[error("{0}")]
    NotRowWise(String),
    /// The expression's type is not the one required here.
    #[error("{0}")]
    Type(String),
}

/// A planning session. The DuckDB dialect gives lambdas (`x -> x['qty']`)
/// for `array_transform` and friends; otherwise SQL is DataFusion's.
fn session() -> SessionContext {
    let config = SessionConfig::new().set_str("datafusion.sql_parser.dialect", "duckdb");
    SessionContext::new_with_config(config)
}

fn plan_error(e: impl std::fmt::Display) -> SqlError {
    SqlError::Plan(e.to_string())
}

/// Turns a logical expression into a physical one over `schema`, with `now()` fixed.
fn physical(
    ctx: &SessionContext,
    expr: Expr,
    schema: &DFSchema,
) -> Result<Arc<dyn PhysicalExpr>, SqlError> {
    let simplify = SimplifyContext::builder()
        .with_schema(Arc::new(schema.clone()))
        .with_current_time()
        .build();
    let simplifier = ExprSimplifier::new(simplify);
    let expr = simplifier.coerce(expr, schema).map_err(plan_error)?;
    let expr = simplifier.simplify(expr).map_err(plan_error)?;
    ctx.create_physical_expr(expr, schema).map_err(plan_error)
}

/// A scalar SQL expression compiled against a schema.
#[derive(Debug, Clone)]
pub(crate) struct CompiledExpr {
    pub(crate) expr: Arc<dyn PhysicalExpr>,
    pub(crate) data_type: DataType,
    pub(crate) nullable: bool,
}

/// Compiles a scalar SQL expression (e.g. `total > 500`) over `schema`.
pub(crate) fn compile_expr(sql: &str, schema: &SchemaRef) -> Result<CompiledExpr, SqlError> {
    let ctx = session();
    let df_schema = DFSchema::try_from(schema.as_ref().clone()).map_err(plan_error)?;
    let logical = ctx.parse_sql_expr(sql, &df_schema).map_err(plan_error)?;
    let expr = physical(&ctx, logical, &df_schema)?;
    let data_type = expr.data_type(schema).map_err(plan_error)?;
    let nullable = expr.nullable(schema).map_err(plan_error)?;
    Ok(CompiledExpr {
        expr,
        data_type,
        nullable,
    })
}

/// Compiles a boolean SQL expression; anything else is a type error.
pub(crate) fn compile_predicate(sql: &str, schema: &SchemaRef) -> Result<CompiledExpr, SqlError> {
    let compiled = compile_expr(sql, schema)?;
    if compiled.data_type != DataType::Boolean {
        return Err(SqlError::Type(format!(
            "expression must be boolean, but `{sql}` is {}",
            compiled.data_type
        )));
    }
    Ok(compiled)
}

/// A `SELECT … FROM input` statement reduced to its projection expressions.
#[derive(Debug, Clone)]
pub(crate) struct Projection {
    pub(crate) exprs: Vec<Arc<dyn PhysicalExpr>>,
    pub(crate) schema: SchemaRef,
}

/// Plans `sql` against a table `input` with `input_schema`; the statement
/// must keep one output row per input row (no WHERE, GROUP BY, ORDER BY,
/// LIMIT, window or join), so that every record still leaves through exactly
/// one door.
pub(crate) fn compile_projection(
    sql: &str,
    input_schema: &SchemaRef,
) -> Result<Projection, SqlError> {
    let ctx = session();
    let table = MemTable::try_new(input_schema.clone(), vec![vec![]]).map_err(plan_error)?;
    ctx.register_table("input", Arc::new(table))
        .map_err(plan_error)?;
    let plan =
        futures::executor::block_on(ctx.state().create_logical_plan(sql)).map_err(plan_error)?;
    let LogicalPlan::Projection(projection) = &plan else {
        return Err(SqlError::NotRowWise(format!(
            "a transform must be `SELECT <expressions> FROM input` (one row out per row in); this statement plans to {}",
            plan.display()
        )));
    };
    let mut source = projection.input.as_ref();
    while let LogicalPlan::SubqueryAlias(alias) = source {
        source = alias.input.as_ref();
    }
    if !matches!(source, LogicalPlan::TableScan(_)) {
        return Err(SqlError::NotRowWise(format!(
            "a transform must read `input` row by row; found {} under the projection \
             (filters belong in validate rules, which route rows to the DLQ or review queue)",
            source.display()
        )));
    }
    let in_schema = projection.input.schema();
    let exprs = projection
        .expr
        .iter()
        .map(|e| physical(&ctx, e.clone(), in_schema))
        .collect::<Result<Vec<_>, _>>()?;
    let fields: Vec<Field> = projection
        .schema
        .fields()
        .iter()
        .map(|f| f.as_ref().clone())
        .collect();
    Ok(Projection {
        exprs,
        schema: Arc::new(Schema::new(fields)),
    })
}

/// Columns computed for the rows that could be evaluated, and the rows that could not.
#[derive(Debug)]
pub(crate) struct Evaluated {
    /// One array per expression, covering the kept rows only.
    pub(crate) columns: Vec<ArrayRef>,
    /// Input rows whose evaluation failed, with DataFusion's message; sorted.
    pub(crate) failed: Vec<(usize, String)>,
}

fn evaluate_all(
    exprs: &[Arc<dyn PhysicalExpr>],
    batch: &RecordBatch,
) -> datafusion::error::Result<Vec<ArrayRef>> {
    exprs
        .iter()
        .map(|e| e.evaluate(batch)?.into_array(batch.num_rows()))
        .collect()
}

/// Evaluates `exprs` over `batch`. If the batch as a whole fails (a cast that
/// does not hold for one row, say), each row is evaluated alone so that only
/// the rows at fault are reported.
pub(crate) fn evaluate(
    exprs: &[Arc<dyn PhysicalExpr>],
    batch: &RecordBatch,
) -> Result<Evaluated, StageError> {
    match evaluate_all(exprs, batch) {
        Ok(columns) => Ok(Evaluated {
            columns,
            failed: Vec::new(),
        }),
        Err(batch_error) => {
            let mut per_row: Vec<Vec<ArrayRef>> = vec![Vec::new(); exprs.len()];
            let mut failed = Vec::new();
            for row in 0..batch.num_rows() {
                match evaluate_all(exprs, &batch.slice(row, 1)) {
                    Ok(cols) => per_row
                        .iter_mut()
                        .zip(cols)
                        .for_each(|(acc, c)| acc.push(c)),
                    Err(e) => failed.push((row, e.strip_backtrace())),
                }
            }
            if failed.is_empty() {
                // Failing as a batch but never alone: not a row's fault.
                return Err(batch_error.into());
            }
            let mut columns = Vec::with_capacity(exprs.len());
            for (expr, parts) in exprs.iter().zip(per_row) {
                columns.push(if parts.is_empty() {
                    arrow::array::new_empty_array(&expr.data_type(&batch.schema())?)
                } else {
                    let refs: Vec<&dyn Array> = parts.iter().map(|a| a.as_ref()).collect();
                    concat(&refs)?
                });
            }
            Ok(Evaluated { columns, failed })
        }
    }
}

/// Rows of a predicate result that are false or null.
pub(crate) fn failing_rows(mask: &BooleanArray) -> impl Iterator<Item = usize> + '_ {
    (0..mask.len()).filter(|&i| !mask.is_valid(i) || !mask.value(i))
}

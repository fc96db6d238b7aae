//! The transform stage: a row-for-row reshaping of a batch.
//!
//! Written either as SQL (`SELECT … FROM input`) or as a declarative
//! [`MappingSpec`] (rename, cast, default, drop, flatten), which is turned
//! into the equivalent SQL. Either way the statement is planned once, its
//! output schema is known before data flows, and each batch costs only the
//! evaluation of the projection. A row whose expression fails (a cast that
//! does not hold, say) is rejected alone to the DLQ.

mod mapping;

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;

use crate::expr::{self, Projection, SqlError};
use crate::{Reject, Route, Stage, StageError, StageOutput};
pub use mapping::{MappingError, MappingSpec};

/// How a transform is written.
#[derive(Debug, Clone)]
pub enum TransformSpec {
    /// `SELECT <expressions> FROM input`.
    Sql(String),
    /// Declarative column operations.
    Mapping(MappingSpec),
}

/// Why a transform cannot be built.
#[derive(Debug, thiserror::Error)]
pub enum TransformError {
    /// The SQL does not plan against the input schema, or is not row-for-row.
    #[error(transparent)]
    Sql(#[from] SqlError),
    /// The mapping names a column the input does not have.
    #[error(transparent)]
    Mapping(#[from] MappingError),
}

/// The transform stage.
#[derive(Debug)]
pub struct Transform {
    projection: Projection,
    sql: String,
}

impl Transform {
    /// Plans the transform against the schema the previous stage emits.
    pub fn new(spec: &TransformSpec, input: &SchemaRef) -> Result<Self, TransformError> {
        let sql = match spec {
            TransformSpec::Sql(sql) => sql.clone(),
            TransformSpec::Mapping(mapping) => mapping.to_sql(input)?,
        };
        let projection = expr::compile_projection(&sql, input)?;
        Ok(Transform { projection, sql })
    }

    /// The SQL this stage runs (generated, for a mapping).
    pub fn sql(&self) -> &str {
        &self.sql
    }
}

impl Stage for Transform {
    fn output_schema(&self) -> SchemaRef {
        self.projection.schema.clone()
    }

    fn apply(&self, batch: &RecordBatch) -> Result<StageOutput, StageError> {
        let evaluated = expr::evaluate(&self.projection.exprs, batch)?;
        let rejects = evaluated
            .failed
            .into_iter()
            .map(|(row, message)| Reject {
                row,
                route: Route::Dlq,
                rule: "transform".into(),
                reason: format!("transform failed for this record: {message}"),
            })
            .collect();
        let batch = RecordBatch::try_new(self.projection.schema.clone(), evaluated.columns)?;
        Ok(StageOutput { batch, rejects })
    }
}

#[cfg(test)]
mod tests;

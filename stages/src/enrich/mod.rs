//! The enrich stage: a lookup join against an in-memory reference table,
//! then fields derived with SQL expressions.
//!
//! The table is a snapshot ([`LookupTable`]) behind a [`SharedTable`]
//! handle: whoever owns the data source (a connector, driven by the engine)
//! swaps in a fresh snapshot on its refresh interval while batches keep
//! flowing; each batch sees one consistent snapshot. Records whose key is not
//! in the table follow [`OnMiss`].

mod table;

use std::sync::Arc;

use arrow::array::{Array, ArrayRef, BooleanArray, RecordBatch, UInt32Array};
use arrow::compute::{cast, filter, filter_record_batch, take};
use arrow::datatypes::{Field, Schema, SchemaRef};

use crate::expr::{self, CompiledExpr, SqlError};
use crate::{Reject, Route, Stage, StageError, StageOutput};
pub use table::{LookupTable, SharedTable, TableError};

/// What happens to a record whose key is not in the reference table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OnMiss {
    /// Keep it; the looked-up columns are null.
    Null,
    /// Send it to the review queue.
    #[default]
    Review,
    /// Send it to the dead-letter queue.
    Dlq,
}

/// Everything needed to build an [`Enrich`] stage, besides the table.
#[derive(Debug, Clone)]
pub struct EnrichSpec {
    /// Name of the lookup, reported with misses.
    pub name: String,
    /// Key columns, as (column in the batch, column in the table).
    pub keys: Vec<(String, String)>,
    /// Table columns to add; empty means every non-key column.
    pub columns: Vec<String>,
    /// Policy for keys not found.
    pub on_miss: OnMiss,
    /// Policy for keys the lookup source could not answer.
    pub on_error: OnMiss,
    /// Derived fields: (name, SQL expression over the joined columns).
    pub derive: Vec<(String, String)>,
}

/// Why an enrich stage cannot be built.
#[derive(Debug, thiserror::Error)]
pub enum EnrichError {
    /// A key or column is missing on one side, or names collide.
    #[error("{0}")]
    Columns(String),
    /// A derived field's SQL does not compile.
    #[error("derive {name:?}: {source}")]
    Derive {
        /// The derived field.
        name: String,
        /// The planning error.
        source: SqlError,
    },
    /// The table cannot be indexed by the keys.
    #[error(transparent)]
    Table(#[from] TableError),
}

/// The enrich stage.
#[derive(Debug)]
pub struct Enrich {
    spec: EnrichSpec,
    table: SharedTable,
    /// Indices of the batch's key columns.
    key_indices: Vec<usize>,
    /// Names of the table columns added.
    added: Vec<String>,
    derived: Vec<CompiledExpr>,
    joined_schema: SchemaRef,
    output_schema: SchemaRef,
}

impl Enrich {
    /// Plans the join and derived fields against `input`, the previous stage's schema.
    pub fn new(
        spec: EnrichSpec,
        table: SharedTable,
        input: &SchemaRef,
    ) -> Result<Self, EnrichError> {
        let snapshot = table.current();
        let table_schema = snapshot.schema();
        let mut key_indices = Vec::with_capacity(spec.keys.len());
        for (batch_key, table_key) in &spec.keys {
            let index = input.index_of(batch_key).map_err(|_| {
                EnrichError::Columns(format!(
                    "key {batch_key:?} is not a column of the input ({})",
                    names(input)
                ))
            })?;
            if table_schema.index_of(table_key).is_err() {
                return Err(EnrichError::Columns(format!(
                    "key {table_key:?} is not a column of the lookup table ({})",
                    names(&table_schema)
                )));
            }
            key_indices.push(index);
        }
        let added: Vec<String> = if spec.columns.is_empty() {
            table_schema
                .fields()
                .iter()
                .map(|f| f.name().clone())
                .filter(|n| !spec.keys.iter().any(|(_, k)| k == n))
                .collect()
        } else {
            spec.columns.clone()
        };
        let mut fields: Vec<Field> = input.fields().iter().map(|f| f.as_ref().clone()).collect();
        for name in &added {
            let field = table_schema.field_with_name(name).map_err(|_| {
                EnrichError::Columns(format!(
                    "column {name:?} is not in the lookup table ({})",
                    names(&table_schema)
                ))
            })?;
            if input.index_of(name).is_ok() {
                return Err(EnrichError::Columns(format!(
                    "lookup column {name:?} would shadow the input column of the same name"
                )));
            }
            fields.push(field.clone().with_nullable(true));
        }
        let joined_schema = Arc::new(Schema::new(fields.clone()));
        let mut derived = Vec::with_capacity(spec.derive.len());
        for (name, sql) in &spec.derive {
            let compiled =
                expr::compile_expr(sql, &joined_schema).map_err(|source| EnrichError::Derive {
                    name: name.clone(),
                    source,
                })?;
            if fields.iter().any(|f| f.name() == name) {
                return Err(EnrichError::Columns(format!(
                    "derived field {name:?} already exists"
                )));
            }
            fields.push(Field::new(
                name,
                compiled.data_type.clone(),
                compiled.nullable,
            ));
            derived.push(compiled);
        }
        // Index the snapshot by the keys now, so a bad key type fails the build, not a batch.
        snapshot.check_keys(&spec.keys.iter().map(|(_, k)| k.clone()).collect::<Vec<_>>())?;
        Ok(Enrich {
            spec,
            table,
            key_indices,
            added,
            derived,
            joined_schema,
            output_schema: Arc::new(Schema::new(fields)),
        })
    }

    /// The handle through which the table is refreshed.
    pub fn table(&self) -> &SharedTable {
        &self.table
    }
}

fn names(schema: &Schema) -> String {
    schema
        .fields()
        .iter()
        .map(|f| f.name().as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

impl Stage for Enrich {
    fn output_schema(&self) -> SchemaRef {
        self.output_schema.clone()
    }

    fn apply(&self, batch: &RecordBatch) -> Result<StageOutput, StageError> {
        self.apply_with(batch, &self.table.current(), &[])
    }
}

impl Enrich {
    /// The stage over `table` instead of the shared snapshot: the rows an
    /// on-demand lookup returned for this batch's keys. `failed` lists the
    /// rows whose key the lookup source could not answer, with why; they
    /// follow `on_error` rather than `on_miss`.
    pub fn apply_with(
        &self,
        batch: &RecordBatch,
        table: &LookupTable,
        failed: &[(usize, String)],
    ) -> Result<StageOutput, StageError> {
        let keys: Vec<ArrayRef> = self
            .key_indices
            .iter()
            .map(|i| batch.column(*i).clone())
            .collect();
        let indices: UInt32Array = table.probe(&keys)?;
        let mut columns = batch.columns().to_vec();
        for name in &self.added {
            let column = table.column(name).ok_or_else(|| {
                StageError::Input(format!("lookup table snapshot lost column {name:?}"))
            })?;
            let taken = take(column.as_ref(), &indices, None)?;
            let want = self.joined_schema.field_with_name(name)?.data_type();
            columns.push(if taken.data_type() == want {
                taken
            } else {
                cast(&taken, want)?
            });
        }
        let joined = RecordBatch::try_new(self.joined_schema.clone(), columns)?;

        let mut rejects = Vec::new();
        let route = |policy: OnMiss| match policy {
            OnMiss::Null => None,
            OnMiss::Review => Some(Route::Review),
            OnMiss::Dlq => Some(Route::Dlq),
        };
        let (on_miss, on_error) = (route(self.spec.on_miss), route(self.spec.on_error));
        let mut failed = failed.iter().peekable();
        let mut kept_rows: Vec<usize> = Vec::with_capacity(batch.num_rows());
        for row in 0..batch.num_rows() {
            let error = failed.next_if(|(r, _)| *r == row).map(|(_, why)| why);
            let (route, rule, reason) = match error {
                Some(why) => (on_error, "error", why.clone()),
                None if indices.is_valid(row) => (None, "", String::new()),
                None => (
                    on_miss,
                    "miss",
                    format!(
                        "no row in lookup {:?} for {}",
                        self.spec.name,
                        describe_key(batch, &self.spec.keys, &self.key_indices, row)
                    ),
                ),
            };
            match route {
                None => kept_rows.push(row),
                Some(route) => rejects.push(Reject {
                    row,
                    route,
                    rule: format!("{}:{rule}", self.spec.name),
                    reason,
                }),
            }
        }
        let joined = if kept_rows.len() == batch.num_rows() {
            joined
        } else {
            let mut mask = vec![false; batch.num_rows()];
            for row in &kept_rows {
                mask[*row] = true;
            }
            filter_record_batch(&joined, &BooleanArray::from(mask))?
        };
        if self.derived.is_empty() {
            return Ok(StageOutput {
                batch: joined,
                rejects,
            });
        }
        let exprs: Vec<_> = self.derived.iter().map(|d| d.expr.clone()).collect();
        let evaluated = expr::evaluate(&exprs, &joined)?;
        let mut base = joined.columns().to_vec();
        if !evaluated.failed.is_empty() {
            let mut keep = vec![true; joined.num_rows()];
            for (j, message) in &evaluated.failed {
                keep[*j] = false;
                rejects.push(Reject {
                    row: kept_rows[*j],
                    route: Route::Dlq,
                    rule: "derive".into(),
                    reason: format!("derived field failed for this record: {message}"),
                });
            }
            let mask = BooleanArray::from(keep);
            base = base
                .iter()
                .map(|c| filter(c, &mask))
                .collect::<Result<_, _>>()?;
            rejects.sort_by_key(|r| r.row);
        }
        base.extend(evaluated.columns);
        let batch = RecordBatch::try_new(self.output_schema.clone(), base)?;
        Ok(StageOutput { batch, rejects })
    }
}

fn describe_key(
    batch: &RecordBatch,
    keys: &[(String, String)],
    indices: &[usize],
    row: usize,
) -> String {
    keys.iter()
        .zip(indices)
        .map(|((name, _), i)| {
            let value = arrow::util::display::array_value_to_string(batch.column(*i), row)
                .unwrap_or_else(|_| "?".into());
            format!("{name}={value:?}")
        })
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests;

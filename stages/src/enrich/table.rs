//! An in-memory reference table indexed by its key columns.

use std::sync::{Arc, RwLock};

use arrow::array::{ArrayRef, RecordBatch, UInt32Array, UInt32Builder};
use arrow::compute::cast;
use arrow::datatypes::SchemaRef;
use arrow::error::ArrowError;
use arrow::row::{RowConverter, SortField};
use hashbrown::HashMap;

/// A table that cannot serve as a lookup.
#[derive(Debug, thiserror::Error)]
pub enum TableError {
    /// A key column is missing.
    #[error("lookup table has no key column {0:?}")]
    MissingKey(String),
    /// The same key appears on two rows.
    #[error("lookup table has key {key} on rows {first} and {second}; keys must be unique")]
    DuplicateKey {
        /// The key, rendered.
        key: String,
        /// First row.
        first: usize,
        /// Second row.
        second: usize,
    },
    /// Arrow could not encode the keys.
    #[error(transparent)]
    Arrow(#[from] ArrowError),
    /// A refreshed snapshot no longer matches the schema the pipeline was planned with.
    #[error("refreshed lookup table has schema {found}, expected {expected}")]
    SchemaChanged {
        /// The schema planned with.
        expected: String,
        /// The new snapshot's schema.
        found: String,
    },
}

/// One immutable snapshot of a reference table with its key index.
pub struct LookupTable {
    batch: RecordBatch,
    key_names: Vec<String>,
    converter: RowConverter,
    index: HashMap<Box<[u8]>, u32>,
}

impl std::fmt::Debug for LookupTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LookupTable")
            .field("rows", &self.batch.num_rows())
            .field("keys", &self.key_names)
            .finish()
    }
}

impl LookupTable {
    /// Indexes `batch` by `keys`; keys must be unique and non-null rows are indexed.
    pub fn new(batch: RecordBatch, keys: &[String]) -> Result<Self, TableError> {
        let mut key_columns = Vec::with_capacity(keys.len());
        for key in keys {
            let column = batch
                .column_by_name(key)
                .ok_or_else(|| TableError::MissingKey(key.clone()))?;
            key_columns.push(column.clone());
        }
        let converter = RowConverter::new(
            key_columns
                .iter()
                .map(|c| SortField::new(c.data_type().clone()))
                .collect(),
        )?;
        let rows = converter.convert_columns(&key_columns)?;
        let mut index = HashMap::with_capacity(batch.num_rows());
        for row in 0..batch.num_rows() {
            if key_columns.iter().any(|c| c.is_null(row)) {
                continue;
            }
            let key: Box<[u8]> = rows.row(row).as_ref().into();
            if let Some(first) = index.insert(key, row as u32) {
                let shown = key_columns
                    .iter()
                    .map(|c| {
                        arrow::util::display::array_value_to_string(c, row).unwrap_or_default()
                    })
                    .collect::<Vec<_>>()
                    .join(", ");
                return Err(TableError::DuplicateKey {
                    key: shown,
                    first: first as usize,
                    second: row,
                });
            }
        }
        Ok(LookupTable {
            batch,
            key_names: keys.to_vec(),
            converter,
            index,
        })
    }

    /// The table's schema.
    pub fn schema(&self) -> SchemaRef {
        self.batch.schema()
    }

    /// Number of rows.
    pub fn len(&self) -> usize {
        self.batch.num_rows()
    }

    /// Whether the table has no rows.
    pub fn is_empty(&self) -> bool {
        self.batch.num_rows() == 0
    }

    /// A column by name.
    pub fn column(&self, name: &str) -> Option<&ArrayRef> {
        self.batch.column_by_name(name)
    }

    pub(crate) fn check_keys(&self, keys: &[String]) -> Result<(), TableError> {
        match keys.iter().find(|k| !self.key_names.contains(k)) {
            Some(k) => Err(TableError::MissingKey(k.clone())),
            None => Ok(()),
        }
    }

    /// For each row of `keys` (the batch's key columns), the matching table
    /// row, or null where there is none (or a key is null).
    pub fn probe(&self, keys: &[ArrayRef]) -> Result<UInt32Array, ArrowError> {
        let fields = self.converter_fields();
        let keys: Vec<ArrayRef> = keys
            .iter()
            .zip(&fields)
            .map(|(k, f)| {
                if k.data_type() == f {
                    Ok(k.clone())
                } else {
                    cast(k, f)
                }
            })
            .collect::<Result<_, _>>()?;
        let rows = self.converter.convert_columns(&keys)?;
        let len = keys.first().map_or(0, |k| k.len());
        let mut out = UInt32Builder::with_capacity(len);
        for row in 0..len {
            if keys.iter().any(|c| c.is_null(row)) {
                out.append_null();
                continue;
            }
            out.append_option(self.index.get(rows.row(row).as_ref()).copied());
        }
        Ok(out.finish())
    }

    fn converter_fields(&self) -> Vec<arrow::datatypes::DataType> {
        self.key_names
            .iter()
            .filter_map(|k| self.batch.column_by_name(k).map(|c| c.data_type().clone()))
            .collect()
    }
}

/// A lookup table that can be swapped while readers use it.
#[derive(Debug, Clone)]
pub struct SharedTable(Arc<RwLock<Arc<LookupTable>>>);

impl SharedTable {
    /// Shares `table`.
    pub fn new(table: LookupTable) -> Self {
        SharedTable(Arc::new(RwLock::new(Arc::new(table))))
    }

    /// The current snapshot.
    pub fn current(&self) -> Arc<LookupTable> {
        match self.0.read() {
            Ok(guard) => guard.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Replaces the snapshot; refused if its schema differs from the current one.
    pub fn replace(&self, table: LookupTable) -> Result<(), TableError> {
        let current = self.current();
        if current.schema() != table.schema() {
            return Err(TableError::SchemaChanged {
                expected: current.schema().to_string(),
                found: table.schema().to_string(),
            });
        }
        let mut guard = match self.0.write() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        };
        *guard = Arc::new(table);
        Ok(())
    }
}

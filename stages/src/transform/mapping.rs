//! The declarative mapping, compiled to SQL.

use arrow::datatypes::{DataType, SchemaRef};

/// Column operations, applied in this order: flatten, default, cast, rename, drop.
#[derive(Debug, Clone, Default)]
pub struct MappingSpec {
    /// Struct columns whose fields become top-level columns named `<column>_<field>`.
    pub flatten: Vec<String>,
    /// Values to use where a column is null: (column, SQL literal value).
    pub defaults: Vec<(String, serde_json::Value)>,
    /// Casts: (column, SQL type such as `BIGINT` or `TIMESTAMP`).
    pub cast: Vec<(String, String)>,
    /// Renames: (from, to).
    pub rename: Vec<(String, String)>,
    /// Columns to leave out.
    pub drop: Vec<String>,
}

/// A mapping that names something the input does not have.
#[derive(Debug, thiserror::Error)]
pub enum MappingError {
    /// No such column.
    #[error("{operation}: no column {column:?} in the input (columns: {available})")]
    UnknownColumn {
        /// The mapping key (`rename`, `cast`, …).
        operation: &'static str,
        /// The missing column.
        column: String,
        /// The input's columns, comma-separated.
        available: String,
    },
    /// `flatten` on a column that is not a struct.
    #[error("flatten: column {column:?} is {data_type}, not a struct")]
    NotAStruct {
        /// The column.
        column: String,
        /// Its type.
        data_type: DataType,
    },
    /// A default that is not a scalar.
    #[error("defaults: value for {column:?} must be a string, number or boolean")]
    BadDefault {
        /// The column.
        column: String,
    },
}

fn unknown(
    operation: &'static str,
    column: &str,
    available: impl Iterator<Item = String>,
) -> MappingError {
    MappingError::UnknownColumn {
        operation,
        column: column.to_string(),
        available: available.collect::<Vec<_>>().join(", "),
    }
}

fn ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

fn literal(value: &serde_json::Value) -> Option<String> {
    match value {
        serde_json::Value::String(s) => Some(format!("'{}'", s.replace('\'', "''"))),
        serde_json::Value::Number(n) => Some(n.to_string()),
        serde_json::Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

impl MappingSpec {
    /// The equivalent `SELECT … FROM input` over `input`.
    pub fn to_sql(&self, input: &SchemaRef) -> Result<String, MappingError> {
        for c in &self.flatten {
            if input.field_with_name(c).is_err() {
                return Err(unknown(
                    "flatten",
                    c,
                    input.fields().iter().map(|f| f.name().clone()),
                ));
            }
        }
        // (output name, expression) in input order, structs flattened in place.
        let mut columns: Vec<(String, String)> = Vec::new();
        for field in input.fields() {
            let name = field.name();
            if self.flatten.contains(name) {
                let DataType::Struct(children) = field.data_type() else {
                    return Err(MappingError::NotAStruct {
                        column: name.clone(),
                        data_type: field.data_type().clone(),
                    });
                };
                for child in children {
                    columns.push((
                        format!("{name}_{}", child.name()),
                        format!("{}['{}']", ident(name), child.name().replace('\'', "''")),
                    ));
                }
            } else {
                columns.push((name.clone(), ident(name)));
            }
        }
        let names = || columns.iter().map(|(n, _)| n.clone());
        let lists: [(&'static str, Vec<&String>); 4] = [
            ("defaults", self.defaults.iter().map(|(c, _)| c).collect()),
            ("cast", self.cast.iter().map(|(c, _)| c).collect()),
            ("rename", self.rename.iter().map(|(c, _)| c).collect()),
            ("drop", self.drop.iter().collect()),
        ];
        for (operation, referenced) in lists {
            for c in referenced {
                if !columns.iter().any(|(n, _)| n == c) {
                    return Err(unknown(operation, c, names()));
                }
            }
        }
        let mut select = Vec::with_capacity(columns.len());
        for (name, mut expr) in columns {
            if let Some((_, value)) = self.defaults.iter().find(|(c, _)| *c == name) {
                let lit = literal(value).ok_or_else(|| MappingError::BadDefault {
                    column: name.clone(),
                })?;
                expr = format!("COALESCE({expr}, {lit})");
            }
            if let Some((_, ty)) = self.cast.iter().find(|(c, _)| *c == name) {
                expr = format!("CAST({expr} AS {ty})");
            }
            let out = self
                .rename
                .iter()
                .find(|(c, _)| *c == name)
                .map(|(_, to)| to.clone())
                .unwrap_or_else(|| name.clone());
            if self.drop.contains(&name) {
                continue;
            }
            select.push(format!("{expr} AS {}", ident(&out)));
        }
        Ok(format!("SELECT {} FROM input", select.join(", ")))
    }
}

//! Redis reference data, looked up for the keys of each batch in one
//! pipelined round trip: a hash per key (`HGETALL <prefix><key>`), or a JSON
//! object per key (`MGET`). Redis values are text, so the pipeline file
//! declares each field's type; a value that does not parse fails that key
//! only, naming the key, the field and the value.

use std::collections::HashMap;
use std::sync::Arc;

use arrow::array::{
    ArrayRef, BooleanBuilder, Float64Builder, Int64Builder, RecordBatch, StringBuilder,
};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use futures::future::BoxFuture;
use redis::aio::ConnectionManager;
use tokio::sync::OnceCell;

use super::{Fetched, KeyedSource, LookupError};

/// How a key's value is stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RedisValue {
    /// A hash: one field per column.
    Hash,
    /// A string holding a JSON object: one member per column.
    Json,
}

/// The type a field is read as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FieldType {
    /// Text (Utf8).
    String,
    /// A 64-bit integer.
    Int,
    /// A 64-bit float.
    Float,
    /// `true`/`false` (or `1`/`0`).
    Bool,
}

impl FieldType {
    fn data_type(self) -> DataType {
        match self {
            FieldType::String => DataType::Utf8,
            FieldType::Int => DataType::Int64,
            FieldType::Float => DataType::Float64,
            FieldType::Bool => DataType::Boolean,
        }
    }
}

/// A Redis lookup.
pub struct RedisLookup {
    client: redis::Client,
    connection: OnceCell<ConnectionManager>,
    prefix: String,
    value: RedisValue,
    key: String,
    fields: Vec<(String, FieldType)>,
    schema: SchemaRef,
    name: String,
}

/// One field value as read: text, or a JSON value.
enum Raw<'a> {
    Text(&'a str),
    Json(&'a serde_json::Value),
}

impl RedisLookup {
    /// A lookup of `<prefix><key>` at `url`; rows are the key column `key` and `fields`.
    pub fn new(
        name: &str,
        url: &str,
        prefix: &str,
        value: RedisValue,
        key: &str,
        fields: Vec<(String, FieldType)>,
    ) -> Result<Self, LookupError> {
        let client = redis::Client::open(url).map_err(|e| LookupError::Invalid {
            source_name: name.to_string(),
            message: format!("{}: {e}", crate::secret::redact_url(url)),
        })?;
        let mut schema = vec![Field::new(key, DataType::Utf8, false)];
        schema.extend(
            fields
                .iter()
                .map(|(f, t)| Field::new(f, t.data_type(), true)),
        );
        Ok(RedisLookup {
            client,
            connection: OnceCell::new(),
            prefix: prefix.to_string(),
            value,
            key: key.to_string(),
            fields,
            schema: Arc::new(Schema::new(schema)),
            name: name.to_string(),
        })
    }

    /// Checks that the server answers, over a connection of its own (for
    /// `check`, before the run's runtime exists).
    pub async fn ping_now(&self) -> Result<(), LookupError> {
        let mut connection = self
            .client
            .get_multiplexed_async_connection()
            .await
            .map_err(|e| self.unavailable(e))?;
        redis::cmd("PING")
            .query_async::<String>(&mut connection)
            .await
            .map(|_| ())
            .map_err(|e| self.unavailable(e))
    }

    /// The key column and field columns.
    pub fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    async fn connection(&self) -> Result<ConnectionManager, LookupError> {
        self.connection
            .get_or_try_init(|| ConnectionManager::new(self.client.clone()))
            .await
            .cloned()
            .map_err(|e| self.unavailable(e))
    }

    fn unavailable(&self, e: redis::RedisError) -> LookupError {
        LookupError::Unavailable {
            source_name: self.name.clone(),
            message: e.to_string(),
        }
    }

    /// Answers `keys` against the server in one round trip.
    async fn query(&self, keys: &[String]) -> Result<Fetched, LookupError> {
        if keys.is_empty() {
            return Ok(Fetched {
                rows: RecordBatch::new_empty(self.schema.clone()),
                failed: Vec::new(),
            });
        }
        let mut connection = self.connection().await?;
        let names: Vec<String> = keys.iter().map(|k| format!("{}{k}", self.prefix)).collect();
        let mut found: Vec<(usize, HashMap<String, Raw<'_>>)> = Vec::new();
        let hashes: Vec<HashMap<String, String>>;
        let documents: Vec<Option<serde_json::Value>>;
        let mut failed = Vec::new();
        match self.value {
            RedisValue::Hash => {
                let mut pipe = redis::pipe();
                for name in &names {
                    pipe.hgetall(name);
                }
                hashes = pipe
                    .query_async(&mut connection)
                    .await
                    .map_err(|e| self.unavailable(e))?;
                for (i, hash) in hashes.iter().enumerate() {
                    if !hash.is_empty() {
                        let fields = hash
                            .iter()
                            .map(|(f, v)| (f.clone(), Raw::Text(v.as_str())))
                            .collect();
                        found.push((i, fields));
                    }
                }
            }
            RedisValue::Json => {
                let texts: Vec<Option<String>> = if names.is_empty() {
                    Vec::new()
                } else {
                    redis::cmd("MGET")
                        .arg(&names)
                        .query_async(&mut connection)
                        .await
                        .map_err(|e| self.unavailable(e))?
                };
                documents = texts
                    .iter()
                    .zip(keys)
                    .map(|(text, key)| {
                        let text = text.as_ref()?;
                        match serde_json::from_str::<serde_json::Value>(text) {
                            Ok(v) if v.is_object() => Some(v),
                            Ok(_) | Err(_) => {
                                failed.push((
                                    key.clone(),
                                    format!("{}{key} is not a JSON object", self.prefix),
                                ));
                                None
                            }
                        }
                    })
                    .collect();
                for (i, document) in documents.iter().enumerate() {
                    if let Some(serde_json::Value::Object(members)) = document {
                        let fields = members
                            .iter()
                            .map(|(f, v)| (f.clone(), Raw::Json(v)))
                            .collect();
                        found.push((i, fields));
                    }
                }
            }
        }
        let rows = self.rows(keys, &found, &mut failed)?;
        Ok(Fetched { rows, failed })
    }

    /// The rows of the keys found whose every field parses; the others go to `failed`.
    fn rows(
        &self,
        keys: &[String],
        found: &[(usize, HashMap<String, Raw<'_>>)],
        failed: &mut Vec<(String, String)>,
    ) -> Result<RecordBatch, LookupError> {
        let mut parsed: Vec<(usize, Vec<Value>)> = Vec::with_capacity(found.len());
        'keys: for (i, fields) in found {
            let mut values = Vec::with_capacity(self.fields.len());
            for (field, ty) in &self.fields {
                match fields.get(field).map(|raw| parse(raw, *ty)).transpose() {
                    Ok(value) => values.push(value.unwrap_or(Value::Null)),
                    Err(shown) => {
                        failed.push((
                            keys[*i].clone(),
                            format!(
                                "{}{}: field {field:?} = {shown} is not a {ty:?}",
                                self.prefix, keys[*i]
                            ),
                        ));
                        continue 'keys;
                    }
                }
            }
            parsed.push((*i, values));
        }
        let mut columns: Vec<ArrayRef> = Vec::with_capacity(1 + self.fields.len());
        columns.push(Arc::new(
            parsed
                .iter()
                .map(|(i, _)| Some(keys[*i].as_str()))
                .collect::<arrow::array::StringArray>(),
        ));
        for (c, (_, ty)) in self.fields.iter().enumerate() {
            let values = parsed.iter().map(|(_, v)| &v[c]);
            columns.push(match ty {
                FieldType::String => {
                    let mut b = StringBuilder::new();
                    values.for_each(|v| b.append_option(v.as_str()));
                    Arc::new(b.finish())
                }
                FieldType::Int => {
                    let mut b = Int64Builder::new();
                    values.for_each(|v| b.append_option(v.as_int()));
                    Arc::new(b.finish())
                }
                FieldType::Float => {
                    let mut b = Float64Builder::new();
                    values.for_each(|v| b.append_option(v.as_float()));
                    Arc::new(b.finish())
                }
                FieldType::Bool => {
                    let mut b = BooleanBuilder::new();
                    values.for_each(|v| b.append_option(v.as_bool()));
                    Arc::new(b.finish())
                }
            });
        }
        RecordBatch::try_new(self.schema.clone(), columns).map_err(|e| LookupError::Invalid {
            source_name: self.name.clone(),
            message: e.to_string(),
        })
    }
}

/// A parsed field value.
enum Value {
    Null,
    Text(String),
    Int(i64),
    Float(f64),
    Bool(bool),
}

impl Value {
    fn as_str(&self) -> Option<&str> {
        match self {
            Value::Text(t) => Some(t),
            _ => None,
        }
    }
    fn as_int(&self) -> Option<i64> {
        match self {
            Value::Int(v) => Some(*v),
            _ => None,
        }
    }
    fn as_float(&self) -> Option<f64> {
        match self {
            Value::Float(v) => Some(*v),
            _ => None,
        }
    }
    fn as_bool(&self) -> Option<bool> {
        match self {
            Value::Bool(v) => Some(*v),
            _ => None,
        }
    }
}

/// Parses one field; on failure, returns the value as shown in messages.
fn parse(raw: &Raw<'_>, ty: FieldType) -> Result<Value, String> {
    match raw {
        Raw::Json(serde_json::Value::Null) => Ok(Value::Null),
        Raw::Json(v) => match (ty, v) {
            (FieldType::String, serde_json::Value::String(s)) => Ok(Value::Text(s.clone())),
            (FieldType::String, other) => Ok(Value::Text(other.to_string())),
            (FieldType::Int, v) if v.as_i64().is_some() => Ok(Value::Int(v.as_i64().unwrap_or(0))),
            (FieldType::Float, v) if v.as_f64().is_some() => {
                Ok(Value::Float(v.as_f64().unwrap_or(0.0)))
            }
            (FieldType::Bool, serde_json::Value::Bool(b)) => Ok(Value::Bool(*b)),
            (_, serde_json::Value::String(s)) => parse(&Raw::Text(s), ty),
            (_, other) => Err(other.to_string()),
        },
        Raw::Text(text) => {
            let shown = || format!("{text:?}");
            match ty {
                FieldType::String => Ok(Value::Text(text.to_string())),
                FieldType::Int => text.trim().parse().map(Value::Int).map_err(|_| shown()),
                FieldType::Float => text.trim().parse().map(Value::Float).map_err(|_| shown()),
                FieldType::Bool => match text.trim() {
                    "true" | "1" => Ok(Value::Bool(true)),
                    "false" | "0" => Ok(Value::Bool(false)),
                    _ => Err(shown()),
                },
            }
        }
    }
}

impl KeyedSource for RedisLookup {
    fn describe(&self) -> String {
        self.name.clone()
    }

    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn key(&self) -> &str {
        &self.key
    }

    fn fetch<'a>(&'a self, keys: &'a [String]) -> BoxFuture<'a, Result<Fetched, LookupError>> {
        Box::pin(self.query(keys))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_and_json_values_parse_by_declared_type() {
        assert!(matches!(
            parse(&Raw::Text("42"), FieldType::Int),
            Ok(Value::Int(42))
        ));
        assert!(matches!(
            parse(&Raw::Text("1"), FieldType::Bool),
            Ok(Value::Bool(true))
        ));
        assert_eq!(
            parse(&Raw::Text("abc"), FieldType::Float).err().as_deref(),
            Some("\"abc\"")
        );
        let v = serde_json::json!("2.5");
        assert!(matches!(parse(&Raw::Json(&v), FieldType::Float), Ok(Value::Float(f)) if f == 2.5));
        let v = serde_json::json!([1]);
        assert!(parse(&Raw::Json(&v), FieldType::Int).is_err());
    }
}

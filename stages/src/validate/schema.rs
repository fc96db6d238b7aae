//! Compiles a JSON Schema (draft 2020-12) into a tree the decoder walks and
//! the Arrow schema of the decoded batch.
//!
//! Mapping: `string` → Utf8 (`format: date-time` → Timestamp(µs, UTC),
//! `format: date` → Date32), `integer` → Int64, `number` → Float64,
//! `boolean` → Boolean, `object` → Struct, `array` → List, `enum` of strings →
//! Utf8. A `type` list may add `"null"`. Keywords the decoder cannot check
//! while decoding (e.g. `oneOf`, `uniqueItems`) are allowed: the stage then
//! also runs the full `jsonschema` validator on each record.

use std::sync::Arc;

use arrow::datatypes::{DataType, Field, Fields, Schema, TimeUnit};
use regex::Regex;
use serde_json::{Map, Value};

use super::ValidateError;

/// Keywords the decoder enforces or that carry no assertion.
const HANDLED: &[&str] = &[
    "$schema",
    "$id",
    "$defs",
    "definitions",
    "$ref",
    "$comment",
    "$anchor",
    "title",
    "description",
    "examples",
    "default",
    "deprecated",
    "readOnly",
    "writeOnly",
    "type",
    "properties",
    "required",
    "additionalProperties",
    "items",
    "minItems",
    "maxItems",
    "enum",
    "const",
    "pattern",
    "minLength",
    "maxLength",
    "format",
    "minimum",
    "maximum",
    "exclusiveMinimum",
    "exclusiveMaximum",
];

/// A compiled schema node.
#[derive(Debug)]
pub(crate) struct Node {
    pub(crate) kind: Kind,
    /// `type` includes `"null"`.
    pub(crate) nullable: bool,
    pub(crate) data_type: DataType,
}

#[derive(Debug)]
pub(crate) enum Kind {
    Object(Object),
    Array(Array),
    String(StringRules),
    Integer(Bounds),
    Number(Bounds),
    Boolean,
}

#[derive(Debug)]
pub(crate) struct Object {
    pub(crate) properties: Vec<Property>,
    pub(crate) additional: bool,
}

#[derive(Debug)]
pub(crate) struct Property {
    pub(crate) name: String,
    pub(crate) required: bool,
    pub(crate) node: Node,
}

#[derive(Debug)]
pub(crate) struct Array {
    pub(crate) items: Box<Node>,
    pub(crate) min_items: Option<usize>,
    pub(crate) max_items: Option<usize>,
}

#[derive(Debug, Default)]
pub(crate) struct StringRules {
    pub(crate) format: StringFormat,
    pub(crate) pattern: Option<(String, Regex)>,
    pub(crate) allowed: Option<Vec<String>>,
    pub(crate) min_length: Option<usize>,
    pub(crate) max_length: Option<usize>,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) enum StringFormat {
    #[default]
    Plain,
    DateTime,
    Date,
    Uuid,
}

#[derive(Debug, Default)]
pub(crate) struct Bounds {
    pub(crate) minimum: Option<f64>,
    pub(crate) maximum: Option<f64>,
    pub(crate) exclusive_minimum: Option<f64>,
    pub(crate) exclusive_maximum: Option<f64>,
}

/// The result of compiling a schema document.
#[derive(Debug)]
pub(crate) struct Compiled {
    pub(crate) root: Object,
    pub(crate) arrow: Arc<Schema>,
    /// Keywords found that only the full validator checks.
    pub(crate) unhandled: Vec<String>,
}

struct Compiler<'a> {
    document: &'a Value,
    unhandled: Vec<String>,
    depth: usize,
}

/// Compiles `document`; the root must be an object schema with properties.
pub(crate) fn compile(document: &Value) -> Result<Compiled, ValidateError> {
    let mut compiler = Compiler {
        document,
        unhandled: Vec::new(),
        depth: 0,
    };
    let root = compiler.node(document, "")?;
    let Kind::Object(root) = root.kind else {
        return Err(ValidateError::Unsupported {
            pointer: String::new(),
            message: "the root schema must have type \"object\"".into(),
        });
    };
    let fields: Fields = root
        .properties
        .iter()
        .map(|p| {
            Field::new(
                &p.name,
                p.node.data_type.clone(),
                !p.required || p.node.nullable,
            )
        })
        .collect();
    Ok(Compiled {
        root,
        arrow: Arc::new(Schema::new(fields)),
        unhandled: compiler.unhandled,
    })
}

fn unsupported(pointer: &str, message: impl Into<String>) -> ValidateError {
    ValidateError::Unsupported {
        pointer: pointer.to_string(),
        message: message.into(),
    }
}

impl<'a> Compiler<'a> {
    fn resolve(&self, schema: &'a Value, pointer: &str) -> Result<&'a Value, ValidateError> {
        let Some(reference) = schema.get("$ref").and_then(Value::as_str) else {
            return Ok(schema);
        };
        let Some(local) = reference.strip_prefix('#') else {
            return Err(unsupported(
                pointer,
                format!("only local references (\"#/...\") are supported, found {reference:?}"),
            ));
        };
        self.document
            .pointer(local)
            .ok_or_else(|| unsupported(pointer, format!("$ref {reference:?} points at nothing")))
    }

    fn node(&mut self, schema: &'a Value, pointer: &str) -> Result<Node, ValidateError> {
        self.depth += 1;
        if self.depth > 64 {
            return Err(unsupported(
                pointer,
                "schema nests deeper than 64 levels (recursive $ref?)",
            ));
        }
        let schema = self.resolve(schema, pointer)?;
        let Some(map) = schema.as_object() else {
            return Err(unsupported(pointer, "a schema must be an object"));
        };
        for key in map.keys() {
            if !HANDLED.contains(&key.as_str()) {
                self.unhandled.push(format!("{pointer}/{key}"));
            }
        }
        let (type_name, nullable) = type_of(map, pointer)?;
        let node = match type_name.as_str() {
            "object" => self.object(map, pointer)?,
            "array" => {
                let items = map
                    .get("items")
                    .ok_or_else(|| unsupported(pointer, "an array schema needs \"items\""))?;
                let items = self.node(items, &format!("{pointer}/items"))?;
                let item_field = Field::new("item", items.data_type.clone(), true);
                Node {
                    data_type: DataType::List(Arc::new(item_field)),
                    kind: Kind::Array(Array {
                        items: Box::new(items),
                        min_items: usize_of(map, "minItems"),
                        max_items: usize_of(map, "maxItems"),
                    }),
                    nullable,
                }
            }
            "string" => string_node(map, pointer)?,
            "integer" => Node {
                kind: Kind::Integer(bounds(map)),
                data_type: DataType::Int64,
                nullable,
            },
            "number" => Node {
                kind: Kind::Number(bounds(map)),
                data_type: DataType::Float64,
                nullable,
            },
            "boolean" => Node {
                kind: Kind::Boolean,
                data_type: DataType::Boolean,
                nullable,
            },
            other => {
                return Err(unsupported(
                    pointer,
                    format!("type {other:?} has no Arrow mapping"),
                ));
            }
        };
        self.depth -= 1;
        Ok(Node { nullable, ..node })
    }

    fn object(
        &mut self,
        map: &'a Map<String, Value>,
        pointer: &str,
    ) -> Result<Node, ValidateError> {
        let required: Vec<&str> = map
            .get("required")
            .and_then(Value::as_array)
            .map(|r| r.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        let Some(props) = map.get("properties").and_then(Value::as_object) else {
            return Err(unsupported(
                pointer,
                "an object schema needs \"properties\" to map to an Arrow struct",
            ));
        };
        if props.len() > super::decode::max_properties() {
            return Err(unsupported(
                pointer,
                format!(
                    "{} properties; at most {} per object are supported",
                    props.len(),
                    super::decode::max_properties()
                ),
            ));
        }
        let mut properties = Vec::with_capacity(props.len());
        for (name, sub) in props {
            let node = self.node(sub, &format!("{pointer}/properties/{}", escape(name)))?;
            properties.push(Property {
                name: name.clone(),
                required: required.contains(&name.as_str()),
                node,
            });
        }
        for name in &required {
            if !props.contains_key(*name) {
                return Err(unsupported(
                    pointer,
                    format!("required property {name:?} is not declared in \"properties\""),
                ));
            }
        }
        let additional = match map.get("additionalProperties") {
            None | Some(Value::Bool(true)) => true,
            Some(Value::Bool(false)) => false,
            Some(_) => {
                self.unhandled
                    .push(format!("{pointer}/additionalProperties"));
                true
            }
        };
        let fields: Fields = properties
            .iter()
            .map(|p| Field::new(&p.name, p.node.data_type.clone(), true))
            .collect();
        Ok(Node {
            data_type: DataType::Struct(fields),
            kind: Kind::Object(Object {
                properties,
                additional,
            }),
            nullable: false,
        })
    }
}

fn escape(name: &str) -> String {
    name.replace('~', "~0").replace('/', "~1")
}

fn type_of(map: &Map<String, Value>, pointer: &str) -> Result<(String, bool), ValidateError> {
    match map.get("type") {
        Some(Value::String(t)) => Ok((t.clone(), t == "null")),
        Some(Value::Array(types)) => {
            let names: Vec<&str> = types.iter().filter_map(Value::as_str).collect();
            let nullable = names.contains(&"null");
            let rest: Vec<&str> = names.into_iter().filter(|t| *t != "null").collect();
            match rest.as_slice() {
                [one] => Ok((one.to_string(), nullable)),
                _ => Err(unsupported(
                    pointer,
                    format!(
                        "type {rest:?}: only one type (optionally with \"null\") maps to an Arrow column"
                    ),
                )),
            }
        }
        None if map.contains_key("enum") || map.get("const").is_some_and(Value::is_string) => {
            Ok(("string".into(), false))
        }
        None if map.contains_key("properties") => Ok(("object".into(), false)),
        _ => Err(unsupported(
            pointer,
            "missing \"type\": every property needs one to map to Arrow",
        )),
    }
}

fn string_node(map: &Map<String, Value>, pointer: &str) -> Result<Node, ValidateError> {
    let format = match map.get("format").and_then(Value::as_str) {
        Some("date-time") => StringFormat::DateTime,
        Some("date") => StringFormat::Date,
        Some("uuid") => StringFormat::Uuid,
        _ => StringFormat::Plain,
    };
    let pattern = match map.get("pattern").and_then(Value::as_str) {
        Some(p) => Some((
            p.to_string(),
            Regex::new(p).map_err(|e| unsupported(&format!("{pointer}/pattern"), e.to_string()))?,
        )),
        None => None,
    };
    let mut allowed: Option<Vec<String>> = None;
    if let Some(values) = map.get("enum").and_then(Value::as_array) {
        let strings: Option<Vec<String>> = values
            .iter()
            .map(|v| v.as_str().map(str::to_string))
            .collect();
        allowed = Some(strings.ok_or_else(|| {
            unsupported(
                &format!("{pointer}/enum"),
                "only enums of strings are supported",
            )
        })?);
    }
    if let Some(c) = map.get("const") {
        let c = c.as_str().ok_or_else(|| {
            unsupported(
                &format!("{pointer}/const"),
                "only string constants are supported",
            )
        })?;
        allowed = Some(vec![c.to_string()]);
    }
    let data_type = match format {
        StringFormat::DateTime => DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
        StringFormat::Date => DataType::Date32,
        _ => DataType::Utf8,
    };
    Ok(Node {
        kind: Kind::String(StringRules {
            format,
            pattern,
            allowed,
            min_length: usize_of(map, "minLength"),
            max_length: usize_of(map, "maxLength"),
        }),
        data_type,
        nullable: false,
    })
}

fn usize_of(map: &Map<String, Value>, key: &str) -> Option<usize> {
    map.get(key).and_then(Value::as_u64).map(|v| v as usize)
}

fn bounds(map: &Map<String, Value>) -> Bounds {
    let get = |k: &str| map.get(k).and_then(Value::as_f64);
    Bounds {
        minimum: get("minimum"),
        maximum: get("maximum"),
        exclusive_minimum: get("exclusiveMinimum"),
        exclusive_maximum: get("exclusiveMaximum"),
    }
}

//! Single-pass JSON → Arrow decoding that enforces the compiled schema.
//!
//! Each record is parsed by `serde_json` straight into the column buffers,
//! guided by the schema tree: no `serde_json::Value` is built. Every check a
//! keyword asks for happens as the value goes by; the first violation stops
//! the record, its half-written rows are rolled back, and the violation names
//! the JSON pointer, the keyword and the offending value.

use std::fmt;

use chrono::{DateTime, NaiveDate};
use serde::de::{self, DeserializeSeed, IgnoredAny, MapAccess, SeqAccess, Visitor};

use super::columns::{Column, RecordColumns};
use super::schema::{Array, Bounds, Kind, Node, Object, StringFormat, StringRules};

/// Why a record failed validation.
#[derive(Debug, Clone, PartialEq)]
pub struct Violation {
    /// JSON pointer of the offending value (`""` for the record itself).
    pub pointer: String,
    /// The JSON Schema keyword (or `json`, `utf8`, `depth`, `size` for input that is not a valid document).
    pub keyword: &'static str,
    /// What was wrong, naming the value.
    pub message: String,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let at = if self.pointer.is_empty() {
            "/"
        } else {
            &self.pointer
        };
        write!(f, "{at}: {}: {}", self.keyword, self.message)
    }
}

#[derive(Clone, Copy)]
enum Seg<'s> {
    Key(&'s str),
    Index(usize),
}

/// Decoding state shared by the seeds of one record.
#[derive(Default)]
pub(crate) struct Ctx<'s> {
    path: Vec<Seg<'s>>,
    violation: Option<(&'static str, String)>,
}

impl<'s> Ctx<'s> {
    fn fail<E: de::Error>(&mut self, keyword: &'static str, message: String) -> E {
        self.violation = Some((keyword, message));
        E::custom(keyword)
    }

    fn pointer(&self) -> String {
        let mut out = String::new();
        for seg in &self.path {
            out.push('/');
            match seg {
                Seg::Key(k) => out.push_str(&k.replace('~', "~0").replace('/', "~1")),
                Seg::Index(i) => out.push_str(&i.to_string()),
            }
        }
        out
    }
}

/// Decodes one record into `columns`; on failure the columns are rolled back.
pub(crate) fn decode_record<'s>(
    root: &'s Object,
    columns: &mut RecordColumns,
    bytes: &[u8],
    ctx: &mut Ctx<'s>,
) -> Result<(), Violation> {
    let text = match std::str::from_utf8(bytes) {
        Ok(text) => text,
        Err(e) => {
            return Err(Violation {
                pointer: String::new(),
                keyword: "utf8",
                message: format!("invalid UTF-8 at byte {}", e.valid_up_to()),
            });
        }
    };
    ctx.path.clear();
    ctx.violation = None;
    // From `str`: the record is checked as UTF-8 once, above, not again per string.
    let mut de = serde_json::Deserializer::from_str(text);
    let seed = RootSeed {
        object: root,
        columns: &mut columns.columns,
        ctx,
    };
    let result = seed.deserialize(&mut de).and_then(|()| de.end());
    match result {
        Ok(()) => {
            columns.rows += 1;
            Ok(())
        }
        Err(err) => {
            columns.rollback();
            let pointer = ctx.pointer();
            Err(match ctx.violation.take() {
                Some((keyword, message)) => Violation {
                    pointer,
                    keyword,
                    message,
                },
                None => {
                    let text = err.to_string();
                    let keyword = if text.starts_with("recursion limit exceeded") {
                        "depth"
                    } else {
                        "json"
                    };
                    Violation {
                        pointer,
                        keyword,
                        message: format!(
                            "{text} (byte {})",
                            byte_offset(bytes, err.line(), err.column())
                        ),
                    }
                }
            })
        }
    }
}

fn byte_offset(bytes: &[u8], line: usize, column: usize) -> usize {
    let mut line_start = 0;
    for _ in 1..line {
        match memchr_newline(&bytes[line_start..]) {
            Some(i) => line_start += i + 1,
            None => break,
        }
    }
    (line_start + column).saturating_sub(1)
}

fn memchr_newline(bytes: &[u8]) -> Option<usize> {
    bytes.iter().position(|b| *b == b'\n')
}

/// Renders a string value for a message, shortened if long.
fn show(s: &str) -> String {
    const MAX: usize = 80;
    if s.len() <= MAX {
        format!("{s:?}")
    } else {
        let mut end = MAX;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        format!("{:?}… ({} bytes)", &s[..end], s.len())
    }
}

struct RootSeed<'s, 'c> {
    object: &'s Object,
    columns: &'c mut [Column],
    ctx: &'c mut Ctx<'s>,
}

impl<'de, 's, 'c> DeserializeSeed<'de> for RootSeed<'s, 'c> {
    type Value = ();
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(ValueVisitor {
            node: None,
            object: Some(self.object),
            column: None,
            children: Some(self.columns),
            ctx: self.ctx,
        })
    }
}

struct NodeSeed<'s, 'c> {
    node: &'s Node,
    column: &'c mut Column,
    ctx: &'c mut Ctx<'s>,
}

impl<'de, 's, 'c> DeserializeSeed<'de> for NodeSeed<'s, 'c> {
    type Value = ();
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        let object = match &self.node.kind {
            Kind::Object(o) => Some(o),
            _ => None,
        };
        d.deserialize_any(ValueVisitor {
            node: Some(self.node),
            object,
            column: Some(self.column),
            children: None,
            ctx: self.ctx,
        })
    }
}

/// Visits any JSON value and appends it where the schema says.
///
/// `node`/`column` are set for a nested value; the root record has only
/// `object`/`children` (its columns are the record's columns).
struct ValueVisitor<'s, 'c> {
    node: Option<&'s Node>,
    object: Option<&'s Object>,
    column: Option<&'c mut Column>,
    children: Option<&'c mut [Column]>,
    ctx: &'c mut Ctx<'s>,
}

fn expected(kind: Option<&Kind>) -> &'static str {
    match kind {
        None | Some(Kind::Object(_)) => "object",
        Some(Kind::Array(_)) => "array",
        Some(Kind::String(_)) => "string",
        Some(Kind::Integer(_)) => "integer",
        Some(Kind::Number(_)) => "number",
        Some(Kind::Boolean) => "boolean",
    }
}

impl<'s, 'c> ValueVisitor<'s, 'c> {
    fn wrong_type<E: de::Error>(self, found: String) -> Result<(), E> {
        let want = expected(self.node.map(|n| &n.kind));
        Err(self
            .ctx
            .fail("type", format!("expected {want}, found {found}")))
    }

    fn check_bounds<E: de::Error>(
        ctx: &mut Ctx<'s>,
        b: &Bounds,
        v: f64,
        shown: &dyn fmt::Display,
    ) -> Result<(), E> {
        if let Some(min) = b.minimum
            && v < min
        {
            return Err(ctx.fail(
                "minimum",
                format!("{shown} is less than the minimum of {min}"),
            ));
        }
        if let Some(max) = b.maximum
            && v > max
        {
            return Err(ctx.fail(
                "maximum",
                format!("{shown} is greater than the maximum of {max}"),
            ));
        }
        if let Some(min) = b.exclusive_minimum
            && v <= min
        {
            return Err(ctx.fail(
                "exclusiveMinimum",
                format!("{shown} is not greater than the exclusive minimum of {min}"),
            ));
        }
        if let Some(max) = b.exclusive_maximum
            && v >= max
        {
            return Err(ctx.fail(
                "exclusiveMaximum",
                format!("{shown} is not less than the exclusive maximum of {max}"),
            ));
        }
        Ok(())
    }

    fn integer<E: de::Error>(self, v: i64) -> Result<(), E> {
        match (self.node.map(|n| &n.kind), self.column) {
            (Some(Kind::Integer(b)), Some(Column::Int64(col))) => {
                Self::check_bounds(self.ctx, b, v as f64, &v)?;
                col.push(v);
                Ok(())
            }
            (Some(Kind::Number(b)), Some(Column::Float64(col))) => {
                Self::check_bounds(self.ctx, b, v as f64, &v)?;
                col.push(v as f64);
                Ok(())
            }
            (node, _) => {
                let want = expected(node);
                Err(self
                    .ctx
                    .fail("type", format!("expected {want}, found number {v}")))
            }
        }
    }

    fn string<E: de::Error>(self, s: &str) -> Result<(), E> {
        let Some(Node {
            kind: Kind::String(rules),
            ..
        }) = self.node
        else {
            let want = expected(self.node.map(|n| &n.kind));
            return Err(self
                .ctx
                .fail("type", format!("expected {want}, found string {}", show(s))));
        };
        let Some(column) = self.column else {
            return Err(self.ctx.fail("type", "internal: no column".into()));
        };
        check_string(self.ctx, rules, s)?;
        match (rules.format, column) {
            (StringFormat::DateTime, Column::Timestamp(col)) => {
                match DateTime::parse_from_rfc3339(s) {
                    Ok(t) => col.push(t.timestamp_micros()),
                    Err(e) => {
                        return Err(self.ctx.fail(
                            "format",
                            format!("{} is not a valid RFC 3339 date-time ({e})", show(s)),
                        ));
                    }
                }
            }
            (StringFormat::Date, Column::Date(col)) => {
                match NaiveDate::parse_from_str(s, "%Y-%m-%d") {
                    Ok(d) => col.push(d.to_epoch_days()),
                    Err(e) => {
                        return Err(self
                            .ctx
                            .fail("format", format!("{} is not a valid date ({e})", show(s))));
                    }
                }
            }
            (_, column) => column.push_str(s),
        }
        Ok(())
    }
}

fn is_uuid(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == 36
        && b.iter().enumerate().all(|(i, c)| match i {
            8 | 13 | 18 | 23 => *c == b'-',
            _ => c.is_ascii_hexdigit(),
        })
}

fn check_string<E: de::Error>(ctx: &mut Ctx<'_>, rules: &StringRules, s: &str) -> Result<(), E> {
    if let Some(allowed) = &rules.allowed
        && !allowed.iter().any(|a| a == s)
    {
        return Err(ctx.fail("enum", format!("{} is not one of {allowed:?}", show(s))));
    }
    if let Some((source, re)) = &rules.pattern
        && !re.is_match(s)
    {
        return Err(ctx.fail("pattern", format!("{} does not match {source:?}", show(s))));
    }
    if rules.min_length.is_some() || rules.max_length.is_some() {
        let chars = s.chars().count();
        if let Some(min) = rules.min_length
            && chars < min
        {
            return Err(ctx.fail(
                "minLength",
                format!("{} is shorter than {min} characters", show(s)),
            ));
        }
        if let Some(max) = rules.max_length
            && chars > max
        {
            return Err(ctx.fail(
                "maxLength",
                format!("{} is longer than {max} characters", show(s)),
            ));
        }
    }
    if rules.format == StringFormat::Uuid && !is_uuid(s) {
        return Err(ctx.fail("format", format!("{} is not a valid uuid", show(s))));
    }
    Ok(())
}

impl<'de, 's, 'c> Visitor<'de> for ValueVisitor<'s, 'c> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str(expected(self.node.map(|n| &n.kind)))
    }

    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        match (self.node, self.column) {
            (Some(node), Some(column)) if node.nullable => {
                column.push_null();
                Ok(())
            }
            (node, _) => {
                let want = expected(node.map(|n| &n.kind));
                Err(self
                    .ctx
                    .fail("type", format!("expected {want}, found null")))
            }
        }
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<(), E> {
        match self.column {
            Some(Column::Boolean(col)) => {
                col.push(v);
                Ok(())
            }
            _ => self.wrong_type(format!("boolean {v}")),
        }
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<(), E> {
        self.integer(v)
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<(), E> {
        match i64::try_from(v) {
            Ok(v) => self.integer(v),
            Err(_) => match (self.node.map(|n| &n.kind), self.column) {
                (Some(Kind::Number(b)), Some(Column::Float64(col))) => {
                    Self::check_bounds(self.ctx, b, v as f64, &v)?;
                    col.push(v as f64);
                    Ok(())
                }
                _ => Err(self
                    .ctx
                    .fail("type", format!("{v} does not fit a 64-bit signed integer"))),
            },
        }
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<(), E> {
        match (self.node.map(|n| &n.kind), self.column) {
            (Some(Kind::Number(b)), Some(Column::Float64(col))) => {
                Self::check_bounds(self.ctx, b, v, &v)?;
                col.push(v);
                Ok(())
            }
            // JSON Schema counts 2.0 as an integer; 2.5 is not one.
            (Some(Kind::Integer(b)), Some(Column::Int64(col)))
                if v.fract() == 0.0 && v >= i64::MIN as f64 && v < i64::MAX as f64 =>
            {
                Self::check_bounds(self.ctx, b, v, &v)?;
                col.push(v as i64);
                Ok(())
            }
            (node, _) => {
                let want = expected(node);
                Err(self
                    .ctx
                    .fail("type", format!("expected {want}, found number {v}")))
            }
        }
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<(), E> {
        self.string(v)
    }

    fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<(), E> {
        self.string(v)
    }

    fn visit_string<E: de::Error>(self, v: String) -> Result<(), E> {
        self.string(&v)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let Some(Node {
            kind:
                Kind::Array(Array {
                    items,
                    min_items,
                    max_items,
                }),
            ..
        }) = self.node
        else {
            return self.wrong_type("array".into());
        };
        let Some(column) = self.column else {
            return Err(self.ctx.fail("type", "internal: no column".into()));
        };
        let Column::List { child, .. } = &mut *column else {
            return Err(self
                .ctx
                .fail("type", "internal: list column expected".into()));
        };
        let mut count = 0usize;
        loop {
            self.ctx.path.push(Seg::Index(count));
            let seed = NodeSeed {
                node: items,
                column: child,
                ctx: self.ctx,
            };
            let more = seq.next_element_seed(seed)?;
            self.ctx.path.pop();
            if more.is_none() {
                break;
            }
            count += 1;
        }
        if let Some(min) = min_items
            && count < *min
        {
            return Err(self.ctx.fail(
                "minItems",
                format!("array has {count} items, fewer than {min}"),
            ));
        }
        if let Some(max) = max_items
            && count > *max
        {
            return Err(self.ctx.fail(
                "maxItems",
                format!("array has {count} items, more than {max}"),
            ));
        }
        column.close_list();
        Ok(())
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<(), A::Error> {
        let Some(object) = self.object else {
            return self.wrong_type("object".into());
        };
        match (self.column, self.children) {
            (_, Some(children)) => visit_object(object, children, self.ctx, map),
            (Some(column), None) => {
                let Column::Struct { children, .. } = &mut *column else {
                    return Err(self
                        .ctx
                        .fail("type", "internal: struct column expected".into()));
                };
                visit_object(object, children, self.ctx, map)?;
                column.close_struct();
                Ok(())
            }
            (None, None) => Err(self.ctx.fail("type", "internal: no column".into())),
        }
    }
}

/// Deepest nesting accepted anywhere in a record, including undeclared properties.
pub(crate) const MAX_DEPTH: usize = 64;

/// Skips an undeclared value, refusing nesting deeper than [`MAX_DEPTH`].
struct Skip<'c, 's> {
    depth: usize,
    ctx: &'c mut Ctx<'s>,
}

impl<'de> DeserializeSeed<'de> for Skip<'_, '_> {
    type Value = ();
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Skip<'_, '_> {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_bool<E: de::Error>(self, _: bool) -> Result<(), E> {
        Ok(())
    }
    fn visit_i64<E: de::Error>(self, _: i64) -> Result<(), E> {
        Ok(())
    }
    fn visit_u64<E: de::Error>(self, _: u64) -> Result<(), E> {
        Ok(())
    }
    fn visit_f64<E: de::Error>(self, _: f64) -> Result<(), E> {
        Ok(())
    }
    fn visit_str<E: de::Error>(self, _: &str) -> Result<(), E> {
        Ok(())
    }
    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        Ok(())
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        if self.depth >= MAX_DEPTH {
            return Err(self.ctx.fail(
                "depth",
                format!("value nests deeper than {MAX_DEPTH} levels"),
            ));
        }
        while seq
            .next_element_seed(Skip {
                depth: self.depth + 1,
                ctx: &mut *self.ctx,
            })?
            .is_some()
        {}
        Ok(())
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        if self.depth >= MAX_DEPTH {
            return Err(self.ctx.fail(
                "depth",
                format!("value nests deeper than {MAX_DEPTH} levels"),
            ));
        }
        while map.next_key::<IgnoredAny>()?.is_some() {
            map.next_value_seed(Skip {
                depth: self.depth + 1,
                ctx: &mut *self.ctx,
            })?;
        }
        Ok(())
    }
}

/// Which property a key names.
enum Key {
    Known(usize),
    /// Not declared, and additional properties are allowed.
    Ignored,
    /// Not declared, and additional properties are forbidden.
    Unknown(String),
}

struct KeySeed<'s> {
    object: &'s Object,
    /// The property expected next: the one after the previous key, since
    /// producers write keys in a steady order (usually the schema's).
    hint: usize,
}

impl<'de> DeserializeSeed<'de> for KeySeed<'_> {
    type Value = Key;
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Key, D::Error> {
        d.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for KeySeed<'_> {
    type Value = Key;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a property name")
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Key, E> {
        let properties = &self.object.properties;
        if properties.get(self.hint).is_some_and(|p| p.name == v) {
            return Ok(Key::Known(self.hint));
        }
        Ok(match properties.iter().position(|p| p.name == v) {
            Some(i) => Key::Known(i),
            None if self.object.additional => Key::Ignored,
            None => Key::Unknown(v.to_string()),
        })
    }
}

const MAX_PROPERTIES: usize = 256;

/// Tracks which properties an object has set.
struct Seen([u64; MAX_PROPERTIES / 64]);

impl Seen {
    fn insert(&mut self, i: usize) -> bool {
        let (word, bit) = (i / 64, 1u64 << (i % 64));
        let new = self.0[word] & bit == 0;
        self.0[word] |= bit;
        new
    }
    fn contains(&self, i: usize) -> bool {
        self.0[i / 64] & (1u64 << (i % 64)) != 0
    }
}

fn visit_object<'de, 's, A: MapAccess<'de>>(
    object: &'s Object,
    children: &mut [Column],
    ctx: &mut Ctx<'s>,
    mut map: A,
) -> Result<(), A::Error> {
    let mut seen = Seen([0; MAX_PROPERTIES / 64]);
    let mut hint = 0;
    while let Some(key) = map.next_key_seed(KeySeed { object, hint })? {
        match key {
            Key::Known(i) => {
                hint = i + 1;
                let property = &object.properties[i];
                if !seen.insert(i) {
                    return Err(ctx.fail("json", format!("duplicate property {:?}", property.name)));
                }
                ctx.path.push(Seg::Key(&property.name));
                map.next_value_seed(NodeSeed {
                    node: &property.node,
                    column: &mut children[i],
                    ctx,
                })?;
                ctx.path.pop();
            }
            Key::Ignored => {
                let depth = ctx.path.len() + 1;
                map.next_value_seed(Skip {
                    depth,
                    ctx: &mut *ctx,
                })?;
            }
            Key::Unknown(name) => {
                return Err(ctx.fail(
                    "additionalProperties",
                    format!("property {name:?} is not allowed"),
                ));
            }
        }
    }
    for (i, property) in object.properties.iter().enumerate() {
        if seen.contains(i) {
            continue;
        }
        if property.required {
            return Err(ctx.fail(
                "required",
                format!("missing required property {:?}", property.name),
            ));
        }
        children[i].push_null();
    }
    Ok(())
}

/// Largest number of properties one object may declare.
pub(crate) const fn max_properties() -> usize {
    MAX_PROPERTIES
}

//! Scalar value types of the pipeline file: interpolated text, sizes, durations.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use std::borrow::Cow;

use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::de::{self, Deserializer, Visitor};
use serde::{Deserialize, Serialize, Serializer};
use serde_saphyr::Spanned;
use tributary_connectors::secret::is_secret_property;

use super::Span;

/// A string value with `${VAR}` interpolated, remembering where it was written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Text {
    /// The value after interpolation.
    pub value: String,
    /// Where the value starts in the pipeline file.
    pub span: Span,
}

impl Text {
    /// The value.
    pub fn as_str(&self) -> &str {
        &self.value
    }
}

impl<'de> Deserialize<'de> for Text {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let spanned = Spanned::<String>::deserialize(d)?;
        let span = Span {
            line: spanned.referenced.line(),
            column: spanned.referenced.column(),
        };
        let value = interpolate(&spanned.value, |name| std::env::var(name).ok()).map_err(|e| {
            de::Error::custom(format!("{e} (line {}, column {})", span.line, span.column))
        })?;
        Ok(Text { value, span })
    }
}

/// A [`Text`] holding a secret (a password, a key, a URL that carries a
/// password): `Debug` shows `***`, and the value is read with [`SecretText::expose`].
#[derive(Clone, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(transparent)]
#[schemars(description = "A secret: give it as `${VAR}` rather than in the file.")]
pub struct SecretText(Text);

impl SecretText {
    /// The value, for the one place that uses it.
    pub fn expose(&self) -> &str {
        &self.0.value
    }

    /// Where the value starts in the pipeline file.
    pub fn span(&self) -> &Span {
        &self.0.span
    }
}

impl fmt::Debug for SecretText {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "SecretText(*** at {}:{})",
            self.0.span.line, self.0.span.column
        )
    }
}

/// Client properties (librdkafka's, …): `Debug` hides the values of secret
/// ones (`sasl.password`, `ssl.key.password`, …).
#[derive(Clone, Default, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(transparent)]
pub struct Properties(pub BTreeMap<String, Text>);

impl Properties {
    /// The properties as plain strings.
    pub fn values(&self) -> BTreeMap<String, String> {
        self.0
            .iter()
            .map(|(k, v)| (k.clone(), v.value.clone()))
            .collect()
    }
}

impl fmt::Debug for Properties {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map()
            .entries(self.0.iter().map(|(k, v)| {
                let shown = if is_secret_property(k) {
                    "***"
                } else {
                    v.value.as_str()
                };
                (k, shown)
            }))
            .finish()
    }
}

/// Replaces `${VAR}` and `${VAR:-default}`; `$${` is a literal `${`.
pub(crate) fn interpolate(
    text: &str,
    lookup: impl Fn(&str) -> Option<String>,
) -> Result<String, String> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        if let Some(escaped) = after.strip_prefix("${") {
            out.push_str("${");
            rest = escaped;
            continue;
        }
        let Some(body) = after.strip_prefix('{') else {
            out.push('$');
            rest = after;
            continue;
        };
        let Some(end) = body.find('}') else {
            return Err(format!("unterminated ${{ in {text:?}"));
        };
        let expr = &body[..end];
        let (name, default) = match expr.split_once(":-") {
            Some((n, d)) => (n, Some(d)),
            None => (expr, None),
        };
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return Err(format!("invalid variable name {name:?} in ${{{expr}}}"));
        }
        match (lookup(name), default) {
            (Some(v), _) if !v.is_empty() || default.is_none() => out.push_str(&v),
            (_, Some(d)) => out.push_str(d),
            (None, None) => {
                return Err(format!(
                    "environment variable {name} is not set (write ${{{name}:-default}} to give a default)"
                ));
            }
            (Some(v), None) => out.push_str(&v),
        }
        rest = &body[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

/// A value with the position where it starts in the pipeline file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Located<T> {
    /// The value.
    pub value: T,
    /// Where it starts.
    pub span: Span,
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Located<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let spanned = Spanned::<T>::deserialize(d)?;
        Ok(Located {
            span: Span {
                line: spanned.referenced.line(),
                column: spanned.referenced.column(),
            },
            value: spanned.value,
        })
    }
}

/// A size in bytes: a number, or text such as `64MiB`, `10 MB`, `512k`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ByteSize(pub u64);

impl ByteSize {
    /// As `usize`, saturating.
    pub fn as_usize(self) -> usize {
        usize::try_from(self.0).unwrap_or(usize::MAX)
    }
}

pub(crate) fn parse_size(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (number, unit) = t.split_at(split);
    let number: f64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a size (examples: 1048576, 512KiB, 64MB)"))?;
    let factor: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" => 1_000,
        "kib" => 1 << 10,
        "m" | "mb" => 1_000_000,
        "mib" => 1 << 20,
        "g" | "gb" => 1_000_000_000,
        "gib" => 1 << 30,
        other => {
            return Err(format!(
                "unknown size unit {other:?} in {text:?} (use B, KB, KiB, MB, MiB, GB, GiB)"
            ));
        }
    };
    Ok((number * factor as f64) as u64)
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = ByteSize;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a size in bytes, such as 1048576 or \"64MiB\"")
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<ByteSize, E> {
                Ok(ByteSize(v))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<ByteSize, E> {
                u64::try_from(v)
                    .map(ByteSize)
                    .map_err(|_| E::custom("a size cannot be negative"))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<ByteSize, E> {
                parse_size(v).map(ByteSize).map_err(E::custom)
            }
        }
        d.deserialize_any(V)
    }
}

/// A duration written as text: `500ms`, `5s`, `10m`, `1h 30m`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DurationText(pub Duration);

impl<'de> Deserialize<'de> for DurationText {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        // Interpolated like any text, so a duration can come from the environment.
        let text = Text::deserialize(d)?.value;
        humantime::parse_duration(text.trim())
            .map(DurationText)
            .map_err(|e| {
                de::Error::custom(format!(
                    "{text:?} is not a duration ({e}; examples: 500ms, 5s, 10m)"
                ))
            })
    }
}

impl JsonSchema for Text {
    fn inline_schema() -> bool {
        true
    }

    fn schema_name() -> Cow<'static, str> {
        Cow::Borrowed("Text")
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({ "type": "string" })
    }
}

impl<T: JsonSchema> JsonSchema for Located<T> {
    fn inline_schema() -> bool {
        T::inline_schema()
    }

    fn schema_name() -> Cow<'static, str> {
        T::schema_name()
    }

    fn schema_id() -> Cow<'static, str> {
        T::schema_id()
    }

    fn json_schema(generator: &mut SchemaGenerator) -> Schema {
        T::json_schema(generator)
    }
}

/// What [`parse_size`] reads.
const SIZE_PATTERN: &str = r"^\s*[0-9]+(\.[0-9]+)?\s*([kKmMgG]i?[bB]?|[bB])?\s*$";

/// What `humantime` reads, as far as a pattern can say (`500ms`, `1h 30m`).
const DURATION_PATTERN: &str =
    r"^\s*[0-9]+(\.[0-9]+)?\s*[a-zµ]+(\s+[0-9]+(\.[0-9]+)?\s*[a-zµ]+)*\s*$";

/// Text that is interpolated from the environment when read (`${VAR:-10s}`).
const VARIABLE_PATTERN: &str = r"\$\{[A-Za-z0-9_]+(:-[^}]*)?\}";

impl JsonSchema for ByteSize {
    fn inline_schema() -> bool {
        true
    }

    fn schema_name() -> Cow<'static, str> {
        Cow::Borrowed("ByteSize")
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "oneOf": [
                { "type": "integer", "minimum": 0 },
                { "type": "string", "pattern": SIZE_PATTERN }
            ]
        })
    }
}

/// Written as the pipeline file would give it: `64MiB` when whole mebibytes
/// (or kibibytes), else the number of bytes.
impl Serialize for ByteSize {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self.0 {
            0 => s.serialize_u64(0),
            n if n % (1 << 30) == 0 => s.collect_str(&format_args!("{}GiB", n >> 30)),
            n if n % (1 << 20) == 0 => s.collect_str(&format_args!("{}MiB", n >> 20)),
            n if n % (1 << 10) == 0 => s.collect_str(&format_args!("{}KiB", n >> 10)),
            n => s.serialize_u64(n),
        }
    }
}

impl JsonSchema for DurationText {
    fn inline_schema() -> bool {
        true
    }

    fn schema_name() -> Cow<'static, str> {
        Cow::Borrowed("DurationText")
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "type": "string",
            "anyOf": [
                { "pattern": DURATION_PATTERN },
                { "pattern": VARIABLE_PATTERN }
            ]
        })
    }
}

/// Written as the pipeline file would give it (`30s`, `500ms`).
impl Serialize for DurationText {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&humantime::format_duration(self.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(name: &str) -> Option<String> {
        match name {
            "HOME_DIR" => Some("/home/x".into()),
            "EMPTY" => Some(String::new()),
            _ => None,
        }
    }

    #[test]
    fn interpolation_replaces_defaults_and_escapes() {
        assert_eq!(interpolate("${HOME_DIR}/a", env).unwrap(), "/home/x/a");
        assert_eq!(interpolate("${MISSING:-d}/a", env).unwrap(), "d/a");
        assert_eq!(interpolate("${EMPTY:-d}", env).unwrap(), "d");
        assert_eq!(
            interpolate("$${HOME_DIR} and $5", env).unwrap(),
            "${HOME_DIR} and $5"
        );
        assert!(
            interpolate("${MISSING}", env)
                .unwrap_err()
                .contains("MISSING is not set")
        );
        assert!(
            interpolate("${OPEN", env)
                .unwrap_err()
                .contains("unterminated")
        );
    }

    #[test]
    fn sizes_accept_units() {
        assert_eq!(parse_size("64MiB").unwrap(), 64 << 20);
        assert_eq!(parse_size("10 MB").unwrap(), 10_000_000);
        assert_eq!(parse_size("512").unwrap(), 512);
        assert!(parse_size("12 parsecs").is_err());
    }
}

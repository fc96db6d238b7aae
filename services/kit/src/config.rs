//! Layered configuration: the defaults in the settings type, then an
//! optional YAML file, then environment variables. `PREFIX_KEY` sets a
//! top-level key and `PREFIX_SECTION__KEY` a nested one
//! (`TRIBUTARY_AUTH_LOCKOUT__MAX_FAILURES=20`); a few conventional names
//! (`DATABASE_URL`, `REDIS_URL`) are aliases given by each service. Every
//! error names the file and line, or the variable, and the key.

use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde_json::{Map, Value};

/// A configuration that cannot be used, with where it came from.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file cannot be read.
    #[error("{file}: cannot read the configuration file: {message}")]
    Unreadable {
        /// The file.
        file: PathBuf,
        /// Why.
        message: String,
    },
    /// The file has a bad key or value.
    #[error("{file}:{line}:{column}: {key}{message}")]
    File {
        /// The file.
        file: PathBuf,
        /// 1-based line (0 when unknown).
        line: u64,
        /// 1-based column (0 when unknown).
        column: u64,
        /// The key path followed by `: `, or nothing at the top level.
        key: String,
        /// What is wrong.
        message: String,
    },
    /// An environment variable or the merged whole has a bad value.
    #[error("{source_name}: {key}{message}")]
    Merged {
        /// The variable that set the key, or `configuration` when unknown.
        source_name: String,
        /// The key path followed by `: `, or nothing.
        key: String,
        /// What is wrong.
        message: String,
    },
}

/// Where settings come from, in increasing priority after the type's defaults.
#[derive(Debug, Clone, Default)]
pub struct Layers<'a> {
    /// An optional YAML file.
    pub file: Option<&'a Path>,
    /// The environment prefix, such as `TRIBUTARY_AUTH`.
    pub prefix: &'a str,
    /// Conventional variables mapped to key paths (`("DATABASE_URL", "database.url")`).
    pub aliases: &'a [(&'a str, &'a str)],
}

/// Loads `T` from `layers` and the process environment.
pub fn load<T: DeserializeOwned>(layers: &Layers<'_>) -> Result<T, ConfigError> {
    load_with(layers, std::env::vars())
}

/// Loads `T` from `layers` and the given variables (tests pass their own).
pub fn load_with<T: DeserializeOwned>(
    layers: &Layers<'_>,
    vars: impl IntoIterator<Item = (String, String)>,
) -> Result<T, ConfigError> {
    let mut merged = match layers.file {
        Some(file) => from_file::<T>(file)?,
        None => Value::Object(Map::new()),
    };
    let mut set_by = Vec::new();
    let prefix = format!("{}_", layers.prefix);
    for (name, raw) in vars {
        let path = if let Some(rest) = name.strip_prefix(&prefix) {
            rest.to_ascii_lowercase().replace("__", ".")
        } else if let Some((_, path)) = layers.aliases.iter().find(|(alias, _)| *alias == name) {
            (*path).to_string()
        } else {
            continue;
        };
        if path.is_empty() {
            continue;
        }
        set(&mut merged, &path, scalar(&raw));
        set_by.push((path, name));
    }
    serde_path_to_error::deserialize::<_, T>(merged).map_err(|error| {
        let key = error.path().to_string();
        let source_name = set_by
            .iter()
            .rev()
            .find(|(path, _)| key == *path || key.starts_with(&format!("{path}.")))
            .map_or_else(|| "configuration".to_string(), |(_, name)| name.clone());
        ConfigError::Merged {
            source_name,
            key: key_prefix(&key),
            message: error.into_inner().to_string(),
        }
    })
}

/// Reads the file, checking it against `T` so that errors carry its lines.
fn from_file<T: DeserializeOwned>(file: &Path) -> Result<Value, ConfigError> {
    let text = std::fs::read_to_string(file).map_err(|e| ConfigError::Unreadable {
        file: file.to_path_buf(),
        message: e.to_string(),
    })?;
    let mut key = String::new();
    let checked = serde_saphyr::with_deserializer_from_str(&text, |de| {
        serde_path_to_error::deserialize::<_, T>(de).map_err(|e| {
            key = e.path().to_string();
            e.into_inner()
        })
    });
    if let Err(error) = checked {
        let (line, column) = error.location().map_or((0, 0), |l| (l.line(), l.column()));
        return Err(ConfigError::File {
            file: file.to_path_buf(),
            line,
            column,
            key: key_prefix(&key),
            message: message(&error),
        });
    }
    let value: Value = serde_saphyr::from_str(&text).map_err(|e| ConfigError::File {
        file: file.to_path_buf(),
        line: 0,
        column: 0,
        key: String::new(),
        message: e.to_string(),
    })?;
    Ok(if value.is_null() {
        Value::Object(Map::new())
    } else {
        value
    })
}

/// A YAML error's first line, without serde-saphyr's own position.
fn message(error: &serde_saphyr::Error) -> String {
    let rendered = error.to_string();
    let first = rendered.lines().next().unwrap_or("").trim();
    let first = first.strip_prefix("error: ").unwrap_or(first);
    first.split(" at line ").next().unwrap_or(first).to_string()
}

/// A YAML file's error as `file:line:column: message` (the position left
/// out when unknown), for the files services check themselves.
pub fn located(file: &Path, error: &serde_saphyr::Error) -> String {
    match error.location() {
        Some(l) => format!(
            "{}:{}:{}: {}",
            file.display(),
            l.line(),
            l.column(),
            message(error)
        ),
        None => format!("{}: {}", file.display(), message(error)),
    }
}

fn key_prefix(key: &str) -> String {
    if key.is_empty() || key == "." {
        String::new()
    } else {
        format!("{key}: ")
    }
}

/// A variable's text as a JSON scalar: numbers and booleans as such, the rest as a string.
fn scalar(raw: &str) -> Value {
    match raw {
        "true" => Value::Bool(true),
        "false" => Value::Bool(false),
        _ => raw
            .parse::<i64>()
            .map(Value::from)
            .or_else(|_| raw.parse::<f64>().map(Value::from))
            .unwrap_or_else(|_| Value::String(raw.to_string())),
    }
}

/// Sets a dotted key path in `root`, making objects on the way.
fn set(root: &mut Value, path: &str, value: Value) {
    let mut here = root;
    let mut steps = path.split('.').peekable();
    while let Some(step) = steps.next() {
        if !here.is_object() {
            *here = Value::Object(Map::new());
        }
        let Value::Object(map) = here else { return };
        if steps.peek().is_none() {
            map.insert(step.to_string(), value);
            return;
        }
        here = map
            .entry(step.to_string())
            .or_insert_with(|| Value::Object(Map::new()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, Deserialize, PartialEq)]
    #[serde(deny_unknown_fields)]
    struct Settings {
        #[serde(default = "listen")]
        listen: String,
        #[serde(default)]
        lockout: Lockout,
        #[serde(default)]
        database_url: Option<String>,
    }

    fn listen() -> String {
        "127.0.0.1:8081".into()
    }

    #[derive(Debug, Default, Deserialize, PartialEq)]
    #[serde(deny_unknown_fields)]
    struct Lockout {
        #[serde(default)]
        max_failures: u32,
        #[serde(default)]
        enabled: bool,
    }

    const ALIASES: &[(&str, &str)] = &[("DATABASE_URL", "database_url")];

    fn vars(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn the_environment_overrides_the_file_which_overrides_the_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("auth.yaml");
        std::fs::write(&file, "listen: 0.0.0.0:9000\nlockout:\n  max_failures: 7\n").unwrap();
        let layers = Layers {
            file: Some(&file),
            prefix: "TRIBUTARY_AUTH",
            aliases: ALIASES,
        };
        let settings: Settings = load_with(
            &layers,
            vars(&[
                ("TRIBUTARY_AUTH_LOCKOUT__ENABLED", "true"),
                ("DATABASE_URL", "postgres://x/y"),
                ("OTHER_LISTEN", "ignored"),
            ]),
        )
        .unwrap();
        assert_eq!(
            settings,
            Settings {
                listen: "0.0.0.0:9000".into(),
                lockout: Lockout {
                    max_failures: 7,
                    enabled: true
                },
                database_url: Some("postgres://x/y".into()),
            }
        );
        let defaults: Settings = load_with(
            &Layers {
                file: None,
                prefix: "TRIBUTARY_AUTH",
                aliases: ALIASES,
            },
            vars(&[]),
        )
        .unwrap();
        assert_eq!(defaults.listen, "127.0.0.1:8081");
    }

    #[test]
    fn errors_name_the_file_line_and_key_or_the_variable() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("auth.yaml");
        std::fs::write(&file, "listen: a\nlockout:\n  max_failure: 7\n").unwrap();
        let layers = Layers {
            file: Some(&file),
            prefix: "TRIBUTARY_AUTH",
            aliases: ALIASES,
        };
        let error = load_with::<Settings>(&layers, vars(&[]))
            .unwrap_err()
            .to_string();
        assert!(error.contains("auth.yaml:3:"), "{error}");
        assert!(error.contains("lockout"), "{error}");
        assert!(error.contains("max_failure"), "{error}");

        let layers = Layers {
            file: None,
            prefix: "TRIBUTARY_AUTH",
            aliases: ALIASES,
        };
        let error = load_with::<Settings>(
            &layers,
            vars(&[("TRIBUTARY_AUTH_LOCKOUT__MAX_FAILURES", "many")]),
        )
        .unwrap_err()
        .to_string();
        assert!(
            error.starts_with("TRIBUTARY_AUTH_LOCKOUT__MAX_FAILURES: lockout.max_failures: "),
            "{error}"
        );
    }
}

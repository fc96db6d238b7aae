use std::collections::BTreeSet;
use std::path::Path;

use super::*;

fn parse_text(text: &str) -> Result<Loaded, ConfigError> {
    parse(text, Path::new("/pipelines/p.yaml"))
}

const MINIMAL: &str = "\
name: p
source:
  file:
    path: in/*.ndjson
stages:
  - validate:
      schema: s.json
outputs:
  - parquet:
      name: t
      path: out/t
dlq:
  path: out/dlq
review:
  path: out/review
";

#[test]
fn a_minimal_file_parses_with_defaults() {
    let loaded = parse_text(MINIMAL).unwrap();
    let p = &loaded.pipeline;
    assert_eq!(p.batch.max_records, 8192);
    assert_eq!(loaded.resolve("out/t"), "/pipelines/out/t");
    assert_eq!(loaded.resolve("../data/x"), "/data/x");
    assert_eq!(loaded.resolve("/abs"), "/abs");
}

#[test]
fn unknown_keys_are_refused_with_line_column_and_key_path() {
    let text = MINIMAL.replace(
        "      schema: s.json",
        "      schema: s.json\n      shema_typo: 1",
    );
    let err = parse_text(&text).unwrap_err();
    assert_eq!((err.line, err.column), (8, 7), "{err}");
    assert!(err.message.contains("shema_typo"), "{err}");
    assert!(err.key_path.starts_with("stages[0]"), "{err}");
    assert!(
        err.to_string().starts_with("/pipelines/p.yaml:8:7: "),
        "{err}"
    );
}

#[test]
fn yaml_syntax_errors_have_a_location() {
    let err = parse_text("name: p\nsource: [unclosed\n").unwrap_err();
    assert!(err.line >= 2, "{err}");
}

#[test]
fn wrong_types_are_refused() {
    let text = MINIMAL.replace("name: p", "name: p\nbatch:\n  max_records: lots");
    let err = parse_text(&text).unwrap_err();
    assert_eq!(err.line, 3, "{err}");
    assert!(err.key_path.contains("batch.max_records"), "{err}");
}

#[test]
fn env_variables_are_interpolated_in_values() {
    let text = MINIMAL.replace(
        "path: out/t",
        "path: ${TRIBUTARY_TEST_UNSET_VAR:-elsewhere}/t",
    );
    let loaded = parse_text(&text).unwrap();
    let OutputConfig::Parquet(out) = &loaded.pipeline.outputs[0].value else {
        panic!("the first output is Parquet");
    };
    assert_eq!(out.path.as_str(), "elsewhere/t");
    assert_eq!((out.path.span.line, out.path.span.column), (11, 13));
}

#[test]
fn a_missing_env_variable_is_refused_with_its_name() {
    let text = MINIMAL.replace("path: out/t", "path: ${TRIBUTARY_TEST_UNSET_VAR}/t");
    let err = parse_text(&text).unwrap_err();
    assert!(
        err.to_string()
            .contains("TRIBUTARY_TEST_UNSET_VAR is not set"),
        "{err}"
    );
    assert_eq!(err.line, 11, "{err}");
}

#[test]
fn a_stage_must_name_one_known_kind() {
    let text = MINIMAL.replace("  - validate:", "  - validat:");
    let err = parse_text(&text).unwrap_err();
    assert!(err.message.contains("validat"), "{err}");
    assert_eq!(err.line, 6, "{err}");
    assert!(!err.key_path.contains("value"), "{err}");
}

#[test]
fn sizes_and_durations_are_checked() {
    let text = MINIMAL.replace("name: p", "name: p\nbatch:\n  max_wait: soon");
    let err = parse_text(&text).unwrap_err();
    assert!(err.message.contains("not a duration"), "{err}");
    let text = MINIMAL.replace("name: p", "name: p\nbatch:\n  max_bytes: 12 parsecs");
    let err = parse_text(&text).unwrap_err();
    assert!(err.message.contains("unknown size unit"), "{err}");
}

/// The committed JSON Schema is the one the types generate, so a new key
/// cannot be missing from it; `tributary schema` writes it again.
#[test]
fn the_committed_pipeline_json_schema_is_the_generated_one() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let committed = std::fs::read_to_string(root.join("schemas/pipeline.schema.json")).unwrap();
    let generated = serde_json::to_string_pretty(&json_schema()).unwrap() + "\n";
    assert!(
        committed == generated,
        "schemas/pipeline.schema.json is not what the config types generate; run\n  \
         cargo run -- schema > schemas/pipeline.schema.json"
    );
}

/// Every key of the pipeline file is documented in docs/pipeline.md.
#[test]
fn every_pipeline_key_is_documented() {
    /// The property names of `schema` and of every schema inside it.
    fn keys(schema: &serde_json::Value, out: &mut BTreeSet<String>) {
        let Some(map) = schema.as_object() else {
            return;
        };
        for (keyword, value) in map {
            match (keyword.as_str(), value) {
                ("properties" | "$defs", serde_json::Value::Object(named)) => {
                    if keyword == "properties" {
                        out.extend(named.keys().cloned());
                    }
                    named.values().for_each(|v| keys(v, out));
                }
                ("oneOf" | "anyOf" | "allOf", serde_json::Value::Array(all)) => {
                    all.iter().for_each(|v| keys(v, out));
                }
                ("items" | "additionalProperties", v) => keys(v, out),
                _ => {}
            }
        }
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let docs = std::fs::read_to_string(root.join("docs/pipeline.md")).unwrap();
    let mut all = BTreeSet::new();
    keys(&json_schema(), &mut all);
    assert!(all.len() > 80, "{} keys", all.len());
    let undocumented: Vec<&String> = all
        .iter()
        .filter(|key| {
            let documented = regex::Regex::new(&format!(r"`(?:[a-z_\[\]….]*\.)?{key}[`.:\[]"))
                .unwrap()
                .is_match(&docs);
            !documented
        })
        .collect();
    assert!(
        undocumented.is_empty(),
        "keys missing from docs/pipeline.md: {undocumented:?}"
    );
}

/// The JSON Schema accepts the shipped pipelines and refuses a typo, so
/// editors and `tributary check` agree.
#[test]
fn the_pipeline_json_schema_matches_the_shipped_pipelines() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let schema = json_schema();
    let validator = jsonschema::validator_for(&schema).unwrap();
    for entry in std::fs::read_dir(root.join("pipelines")).unwrap() {
        let path = entry.unwrap().path();
        let text = std::fs::read_to_string(&path).unwrap();
        let value: serde_json::Value = serde_saphyr::from_str(&text).unwrap();
        let errors: Vec<String> = validator
            .iter_errors(&value)
            .map(|e| e.to_string())
            .collect();
        assert!(errors.is_empty(), "{}: {errors:?}", path.display());
        load(&path).unwrap_or_else(|e| panic!("{e}"));
        let typo: serde_json::Value =
            serde_saphyr::from_str(&text.replace("on_miss:", "on_mis:")).unwrap();
        assert!(!validator.is_valid(&typo));
    }
    // The pipeline the Kubernetes ConfigMap ships, too.
    let configmap: serde_json::Value = serde_saphyr::from_str(
        &std::fs::read_to_string(root.join("deploy/k8s/configmap.yaml")).unwrap(),
    )
    .unwrap();
    let text = configmap["data"]["orders.yaml"].as_str().unwrap();
    let value: serde_json::Value = serde_saphyr::from_str(text).unwrap();
    let errors: Vec<String> = validator
        .iter_errors(&value)
        .map(|e| e.to_string())
        .collect();
    assert!(errors.is_empty(), "deploy/k8s/configmap.yaml: {errors:?}");
}

#[test]
fn secrets_in_the_file_never_show_in_debug() {
    let text = "\
name: p
source:
  kafka:
    brokers: b:9092
    topics: [t]
    group: g
    properties:
      sasl.username: app
      sasl.password: kafka-hunter2
stages:
  - validate:
      schema: s.json
  - enrich:
      lookup:
        key: id
        postgres:
          url: postgres://app:pg-hunter2@db/orders
          table: customers
outputs:
  - parquet:
      name: t
      path: out/t
  - snowflake:
      name: wh
      from: t
      account: acme
      user: loader
      password: sf-hunter2
      database: D
      schema: S
      table: T
      stage: ST
dlq:
  path: out/dlq
review:
  path: out/review
storage:
  s3:
    access_key_id: AKIAEXAMPLE
    secret_access_key: s3-hunter2
    session_token: s3-token
";
    let loaded = parse_text(text).unwrap();
    let shown = format!("{loaded:?}");
    for secret in [
        "kafka-hunter2",
        "pg-hunter2",
        "sf-hunter2",
        "s3-hunter2",
        "s3-token",
    ] {
        assert!(!shown.contains(secret), "{secret} shown in Debug");
    }
    for visible in ["sasl.username", "app", "AKIAEXAMPLE", "customers"] {
        assert!(shown.contains(visible), "{visible} missing from Debug");
    }
}

#[test]
fn exactly_one_choice_is_refused_with_the_choices_named() {
    let both = MINIMAL.replace(
        "  - validate:\n      schema: s.json\n",
        "  - validate:\n      schema: s.json\n  - transform:\n      sql: SELECT * FROM input\n      mapping:\n        drop: [a]\n",
    );
    let err = parse_text(&both).unwrap_err();
    assert_eq!(
        err.message, "give exactly one of `sql` or `mapping`, not 2",
        "{err}"
    );
    assert_eq!(err.key_path, "stages[1].transform", "{err}");
    assert_eq!((err.line, err.column), (9, 7), "{err}");

    let neither = MINIMAL.replace("dlq:\n  path: out/dlq", "dlq:\n  max_file_bytes: 1MiB");
    assert_ne!(neither, MINIMAL);
    let err = parse_text(&neither).unwrap_err();
    assert!(
        err.message
            .contains("exactly one of `path` (NDJSON files) or `kafka`"),
        "{err}"
    );
    assert!(err.message.contains("there is none"), "{err}");
    assert_eq!(err.key_path, "dlq", "{err}");

    let lookup = |table: &str| {
        MINIMAL.replace(
            "  - validate:\n      schema: s.json\n",
            &format!("  - validate:\n      schema: s.json\n  - enrich:\n      lookup:\n        key: id\n{table}"),
        )
    };
    let err = parse_text(&lookup("        path: c.csv\n        redis:\n          url: redis://r\n          fields: {a: string}\n")).unwrap_err();
    assert!(
        err.message
            .contains("exactly one of `path` (a file), `postgres` or `redis`, not 2"),
        "{err}"
    );
    let err = parse_text(&lookup("        postgres:\n          url: postgres://db\n")).unwrap_err();
    assert!(
        err.message.contains("exactly one of `table` or `query`"),
        "{err}"
    );
    let loaded = parse_text(&lookup(
        "        postgres:\n          url: postgres://db\n          query: SELECT 1\n",
    ))
    .unwrap();
    let StageConfig::Enrich(enrich) = &loaded.pipeline.stages[1].value else {
        panic!("not an enrich stage")
    };
    assert!(matches!(
        &enrich.lookup.table,
        LookupTableConfig::Postgres(pg) if matches!(&pg.read, PostgresReadConfig::Query(q) if q.value == "SELECT 1")
    ));
}

#[test]
fn error_paths_and_messages_read_as_the_file_does() {
    assert_eq!(
        file_key_path("stages[0].value.validate.bogus"),
        "stages[0].validate.bogus"
    );
    assert_eq!(file_key_path("outputs[2].value"), "outputs[2]");
    assert_eq!(file_key_path("batch.max_wait"), "batch.max_wait");
    assert_eq!(
        without_location("line 8 column 7: unknown field"),
        "unknown field"
    );
    assert_eq!(without_location("line of sight: x"), "line of sight: x");
}

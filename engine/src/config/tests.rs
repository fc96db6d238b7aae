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

/// The published JSON Schema for pipeline files accepts the shipped pipelines
/// and refuses a typo, so editors and `tributary check` agree.
#[test]
fn the_pipeline_json_schema_matches_the_shipped_pipelines() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let schema: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(root.join("schemas/pipeline.schema.json")).unwrap(),
    )
    .unwrap();
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

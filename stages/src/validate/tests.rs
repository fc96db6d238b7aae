use arrow::array::{Array, BinaryArray, ListArray, StructArray, TimestampMicrosecondArray};
use arrow::datatypes::{DataType, TimeUnit};
use serde_json::json;

use arrow::array::AsArray;
use arrow::datatypes::Int64Type;

use super::*;

fn schema() -> serde_json::Value {
    json!({
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "type": "object",
        "required": ["id", "at", "kind", "items"],
        "properties": {
            "id": {"type": "string", "pattern": "^C[0-9]{3}$"},
            "at": {"type": "string", "format": "date-time"},
            "kind": {"enum": ["a", "b"]},
            "n": {"type": ["integer", "null"], "minimum": 1},
            "items": {
                "type": "array", "minItems": 1, "maxItems": 3,
                "items": {
                    "type": "object",
                    "required": ["qty"],
                    "additionalProperties": false,
                    "properties": {"qty": {"type": "integer", "minimum": 1}, "price": {"type": "number"}}
                }
            },
            "ship": {"type": "object", "properties": {"country": {"type": "string"}}}
        }
    })
}

fn stage(rules: Vec<RuleSpec>) -> Validate {
    Validate::new(ValidateSpec {
        schema: schema(),
        max_record_bytes: 4096,
        rules,
    })
    .unwrap()
}

const GOOD: &str = r#"{"id":"C001","at":"2026-11-24T10:00:00.5Z","kind":"a","n":3,"items":[{"qty":2,"price":1.5}],"ship":{"country":"DE"}}"#;

fn payloads(lines: &[&[u8]]) -> BinaryArray {
    BinaryArray::from_iter_values(lines.iter().copied())
}

/// Validates `line` between two good records and returns the one reject.
fn reject_of(line: &[u8]) -> Reject {
    let out = stage(vec![])
        .apply(&payloads(&[GOOD.as_bytes(), line, GOOD.as_bytes()]))
        .unwrap();
    assert_eq!(out.batch.num_rows(), 2, "the good neighbours survive");
    assert_eq!(out.rejects.len(), 1, "{:?}", out.rejects);
    assert_eq!(out.rejects[0].row, 1);
    assert_eq!(out.rejects[0].route, Route::Dlq);
    out.rejects[0].clone()
}

fn bad(field: &str, value: &str) -> String {
    let mut v: serde_json::Value = serde_json::from_str(GOOD).unwrap();
    v[field] = serde_json::from_str(value).unwrap();
    v.to_string()
}

#[test]
fn the_arrow_schema_follows_the_json_schema() {
    let s = stage(vec![]).output_schema();
    assert_eq!(
        s.field_with_name("id").unwrap().data_type(),
        &DataType::Utf8
    );
    assert!(!s.field_with_name("id").unwrap().is_nullable());
    assert_eq!(
        s.field_with_name("at").unwrap().data_type(),
        &DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()))
    );
    assert_eq!(
        s.field_with_name("n").unwrap().data_type(),
        &DataType::Int64
    );
    assert!(matches!(
        s.field_with_name("items").unwrap().data_type(),
        DataType::List(_)
    ));
    assert!(matches!(
        s.field_with_name("ship").unwrap().data_type(),
        DataType::Struct(_)
    ));
    let names: Vec<&str> = s.fields().iter().map(|f| f.name().as_str()).collect();
    assert_eq!(
        names,
        vec!["id", "at", "kind", "n", "items", "ship"],
        "declaration order is kept"
    );
}

#[test]
fn good_records_decode_into_typed_columns() {
    let other = r#"{"id":"C002","at":"2026-11-24T00:00:00+01:00","kind":"b","items":[{"qty":1},{"qty":4,"price":2}]}"#;
    let out = stage(vec![])
        .apply(&payloads(&[GOOD.as_bytes(), other.as_bytes()]))
        .unwrap();
    assert!(out.rejects.is_empty(), "{:?}", out.rejects);
    let b = &out.batch;
    assert_eq!(b.num_rows(), 2);
    let at = b
        .column(1)
        .as_any()
        .downcast_ref::<TimestampMicrosecondArray>()
        .unwrap();
    assert_eq!(at.value(0), 1_795_514_400_500_000);
    assert_eq!(
        at.value(1),
        1_795_474_800_000_000,
        "offsets are converted to UTC"
    );
    let n = b.column(3).as_primitive::<Int64Type>();
    assert_eq!((n.value(0), n.is_null(1)), (3, true));
    let items = b.column(4).as_any().downcast_ref::<ListArray>().unwrap();
    assert_eq!(items.value_length(1), 2);
    let qty = items
        .values()
        .as_any()
        .downcast_ref::<StructArray>()
        .unwrap()
        .column(0)
        .clone();
    let qty = qty.as_primitive::<Int64Type>();
    assert_eq!(qty.values().to_vec(), vec![2, 1, 4]);
    let ship = b.column(5).as_any().downcast_ref::<StructArray>().unwrap();
    assert!(ship.is_valid(0) && ship.is_null(1));
    let country = ship.column(0).as_string::<i32>();
    assert_eq!(country.value(0), "DE");
}

#[test]
fn not_json_is_rejected_with_its_position() {
    let r = reject_of(b"<html>not json</html>");
    assert_eq!(r.rule, "json");
    assert!(r.reason.contains("expected value"), "{}", r.reason);
}

#[test]
fn truncated_json_is_rejected() {
    let r = reject_of(&GOOD.as_bytes()[..40]);
    assert_eq!(r.rule, "json");
    assert!(r.reason.contains("EOF"), "{}", r.reason);
}

#[test]
fn trailing_garbage_is_rejected() {
    let r = reject_of(format!("{GOOD} x").as_bytes());
    assert_eq!(r.rule, "json");
}

#[test]
fn wrong_types_name_the_pointer_and_value() {
    let r = reject_of(bad("n", r#""12.5x""#).as_bytes());
    assert_eq!(r.rule, "type");
    assert_eq!(
        r.reason,
        r#"/n: type: expected integer, found string "12.5x""#
    );
    assert_eq!(
        reject_of(bad("n", "2.5").as_bytes()).rule,
        "type",
        "2.5 is not an integer"
    );
    assert_eq!(reject_of(bad("id", "12").as_bytes()).rule, "type");
    assert_eq!(reject_of(bad("items", "{}").as_bytes()).rule, "type");
}

#[test]
fn integers_written_as_whole_floats_are_integers() {
    let out = stage(vec![])
        .apply(&payloads(&[bad("n", "2.0").as_bytes()]))
        .unwrap();
    assert!(out.rejects.is_empty());
}

#[test]
fn null_is_accepted_only_where_the_type_allows_it() {
    let out = stage(vec![])
        .apply(&payloads(&[bad("n", "null").as_bytes()]))
        .unwrap();
    assert!(out.rejects.is_empty());
    let r = reject_of(bad("id", "null").as_bytes());
    assert_eq!(r.reason, "/id: type: expected string, found null");
}

#[test]
fn missing_required_fields_are_named() {
    let mut v: serde_json::Value = serde_json::from_str(GOOD).unwrap();
    v.as_object_mut().unwrap().remove("kind");
    let r = reject_of(v.to_string().as_bytes());
    assert_eq!(r.rule, "required");
    assert!(r.reason.contains("\"kind\""), "{}", r.reason);
}

#[test]
fn out_of_range_values_in_nested_arrays_name_the_pointer() {
    let r = reject_of(bad("items", r#"[{"qty":1},{"qty":0}]"#).as_bytes());
    assert_eq!(r.rule, "minimum");
    assert_eq!(
        r.reason,
        "/items/1/qty: minimum: 0 is less than the minimum of 1"
    );
}

#[test]
fn enum_pattern_and_format_violations() {
    assert_eq!(reject_of(bad("kind", r#""c""#).as_bytes()).rule, "enum");
    let r = reject_of(bad("id", r#""X001""#).as_bytes());
    assert_eq!(
        (r.rule.as_str(), r.reason.contains("^C[0-9]{3}$")),
        ("pattern", true)
    );
    let r = reject_of(bad("at", r#""2026-13-45T99:61:00Z""#).as_bytes());
    assert_eq!(r.rule, "format");
    assert!(r.reason.starts_with("/at: format:"), "{}", r.reason);
}

#[test]
fn array_length_and_additional_properties() {
    assert_eq!(reject_of(bad("items", "[]").as_bytes()).rule, "minItems");
    assert_eq!(
        reject_of(bad("items", r#"[{"qty":1},{"qty":1},{"qty":1},{"qty":1}]"#).as_bytes()).rule,
        "maxItems"
    );
    let r = reject_of(bad("items", r#"[{"qty":1,"colour":"red"}]"#).as_bytes());
    assert_eq!(r.rule, "additionalProperties");
    assert!(r.reason.contains("colour"));
}

#[test]
fn duplicate_keys_are_refused() {
    let line = GOOD.replacen("\"kind\":\"a\"", "\"kind\":\"a\",\"kind\":\"b\"", 1);
    assert_eq!(reject_of(line.as_bytes()).rule, "json");
}

#[test]
fn invalid_utf8_is_rejected_with_the_byte_offset() {
    let mut line = GOOD.as_bytes().to_vec();
    line[9] = 0xff;
    let r = reject_of(&line);
    assert_eq!(r.rule, "utf8");
    assert!(r.reason.contains("byte 9"), "{}", r.reason);
}

#[test]
fn oversized_records_are_rejected_unread() {
    let line = bad(
        "ship",
        &format!(r#"{{"country":"DE","note":"{}"}}"#, "x".repeat(5000)),
    );
    let r = reject_of(line.as_bytes());
    assert_eq!(r.rule, "size");
}

#[test]
fn deep_nesting_is_rejected_not_overflowed() {
    let deep = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
    let line = GOOD.replacen('{', &format!("{{\"meta\":{deep},"), 1);
    let roomy = Validate::new(ValidateSpec {
        schema: schema(),
        max_record_bytes: 1 << 20,
        rules: vec![],
    })
    .unwrap();
    let out = roomy.apply(&payloads(&[line.as_bytes()])).unwrap();
    assert_eq!(out.rejects[0].rule, "depth", "{:?}", out.rejects);
    let top = "[".repeat(10_000);
    let out = roomy.apply(&payloads(&[top.as_bytes()])).unwrap();
    assert_eq!(
        out.rejects[0].rule, "type",
        "a non-object record is a type error"
    );
}

#[test]
fn a_bad_record_leaves_no_trace_in_the_columns() {
    // The bad record fails deep inside its second item, after other columns were written.
    let half = bad("items", r#"[{"qty":5},{"qty":0}]"#);
    let out = stage(vec![])
        .apply(&payloads(&[half.as_bytes(), GOOD.as_bytes()]))
        .unwrap();
    let items = out
        .batch
        .column(4)
        .as_any()
        .downcast_ref::<ListArray>()
        .unwrap();
    assert_eq!(items.len(), 1);
    assert_eq!(items.value(0).len(), 1, "the rolled-back items are gone");
    let ids = out.batch.column(0).as_string::<i32>();
    assert_eq!(ids.value(0), "C001");
}

#[test]
fn rules_route_by_severity_and_error_wins() {
    let rules = vec![
        RuleSpec {
            name: "small".into(),
            sql: "n < 10".into(),
            severity: Severity::Warn,
        },
        RuleSpec {
            name: "not_b".into(),
            sql: "kind <> 'b'".into(),
            severity: Severity::Error,
        },
    ];
    let lines = [
        GOOD.to_string(),
        bad("n", "50"),
        bad("kind", r#""b""#),
        bad("n", "50").replace("\"kind\":\"a\"", "\"kind\":\"b\""),
    ];
    let refs: Vec<&[u8]> = lines.iter().map(|l| l.as_bytes()).collect();
    let out = stage(rules).apply(&payloads(&refs)).unwrap();
    assert_eq!(out.batch.num_rows(), 1);
    let routes: Vec<(usize, Route, &str)> = out
        .rejects
        .iter()
        .map(|r| (r.row, r.route, r.rule.as_str()))
        .collect();
    assert_eq!(
        routes,
        vec![
            (1, Route::Review, "small"),
            (2, Route::Dlq, "not_b"),
            (3, Route::Dlq, "not_b")
        ]
    );
}

#[test]
fn a_rule_with_a_null_result_fails() {
    let rules = vec![RuleSpec {
        name: "has_n".into(),
        sql: "n > 0".into(),
        severity: Severity::Error,
    }];
    let out = stage(rules)
        .apply(&payloads(&[bad("n", "null").as_bytes()]))
        .unwrap();
    assert_eq!(out.rejects.len(), 1);
}

#[test]
fn rules_that_do_not_compile_are_refused_with_their_index() {
    let err = Validate::new(ValidateSpec {
        schema: schema(),
        max_record_bytes: 10,
        rules: vec![RuleSpec {
            name: "typo".into(),
            sql: "nope > 1".into(),
            severity: Severity::Error,
        }],
    })
    .unwrap_err();
    assert!(matches!(err, ValidateError::Rule { index: 0, .. }), "{err}");
    let err = Validate::new(ValidateSpec {
        schema: schema(),
        max_record_bytes: 10,
        rules: vec![RuleSpec {
            name: "not_bool".into(),
            sql: "n + 1".into(),
            severity: Severity::Error,
        }],
    })
    .unwrap_err();
    assert!(err.to_string().contains("must be boolean"), "{err}");
}

#[test]
fn schemas_that_cannot_map_to_arrow_are_refused() {
    let err = Validate::new(ValidateSpec {
        schema: json!({"type": "object", "properties": {"x": {"type": ["string", "integer"]}}}),
        max_record_bytes: 10,
        rules: vec![],
    })
    .unwrap_err();
    assert!(err.to_string().contains("/properties/x"), "{err}");
    let err = Validate::new(ValidateSpec {
        schema: json!({"type": "object", "properties": {"x": {"type": "strin"}}}),
        max_record_bytes: 10,
        rules: vec![],
    })
    .unwrap_err();
    assert!(matches!(err, ValidateError::MetaSchema(_)), "{err}");
}

#[test]
fn keywords_the_decoder_skips_are_checked_by_the_full_validator() {
    let schema = json!({
        "type": "object",
        "properties": {"tags": {"type": "array", "items": {"type": "string"}, "uniqueItems": true}}
    });
    let v = Validate::new(ValidateSpec {
        schema,
        max_record_bytes: 1000,
        rules: vec![],
    })
    .unwrap();
    let out = v
        .apply(&payloads(&[
            br#"{"tags":["a","b"]}"#,
            br#"{"tags":["a","a"]}"#,
        ]))
        .unwrap();
    assert_eq!(out.batch.num_rows(), 1);
    assert_eq!(out.rejects[0].row, 1);
    assert_eq!(out.rejects[0].rule, "schema");
}

#[test]
fn the_bundled_event_schemas_accept_their_valid_example_and_reject_the_invalid_one() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../schemas/events");
    let mut checked = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let Some(name) = path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_suffix(".schema.json"))
        else {
            continue;
        };
        let schema: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        let stage = Validate::new(ValidateSpec {
            schema,
            max_record_bytes: 1 << 20,
            rules: vec![],
        })
        .unwrap_or_else(|e| panic!("{name}: {e}"));
        let example =
            |kind: &str| std::fs::read(dir.join(format!("examples/{name}.{kind}.json"))).unwrap();
        let valid = example("valid");
        let invalid = example("invalid");
        let out = stage
            .apply(&payloads(&[valid.trim_ascii(), invalid.trim_ascii()]))
            .unwrap();
        assert_eq!(out.batch.num_rows(), 1, "{name}: {:?}", out.rejects);
        assert_eq!(out.rejects.len(), 1, "{name}");
        assert_eq!(out.rejects[0].row, 1, "{name}: the valid example passes");
        checked += 1;
    }
    assert_eq!(checked, 6);
}

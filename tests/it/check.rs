//! `tributary check` (and `run`) refuse bad pipeline files with file:line:column.

use std::path::Path;

use crate::support::*;

/// Writes the shipped `pipelines/<shipped>` with `edit` applied into the workspace as `written_as` and checks it.
fn check_shipped(
    ws: &Workspace,
    shipped: &str,
    written_as: &str,
    edit: impl Fn(String) -> String,
) -> std::process::Output {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let original = std::fs::read_to_string(repo.join("pipelines").join(shipped)).unwrap();
    let schemas = repo.join("schemas").canonicalize().unwrap();
    let edited = edit(original.replace("../schemas/", &format!("{}/", schemas.display())));
    let path = ws.path(written_as);
    std::fs::write(&path, edited).unwrap();
    ws.tributary(&["check", path.to_str().unwrap()])
}

/// The orders pipeline with `edit` applied, checked: (success, stderr).
fn check_edited(ws: &Workspace, edit: impl Fn(String) -> String) -> (bool, String) {
    let out = check_shipped(ws, "orders.yaml", "pipeline.yaml", edit);
    (out.status.success(), text(&out.stderr))
}

fn refused(ws: &Workspace, edit: impl Fn(String) -> String) -> String {
    let (ok, stderr) = check_edited(ws, edit);
    assert!(!ok, "expected check to fail");
    assert!(
        stderr.contains("pipeline.yaml:"),
        "names the file: {stderr}"
    );
    stderr
}

#[test]
fn the_bundled_pipeline_checks_and_shows_its_output_schema() {
    let ws = Workspace::generate(10, 0.0, 1);
    let (ok, stderr) = check_edited(&ws, |t| t);
    assert!(ok, "{stderr}");
    let out = ws.tributary(&["check", orders_pipeline().to_str().unwrap()]);
    let stdout = text(&out.stdout);
    assert!(stdout.contains("total_cents"), "{stdout}");
    assert!(stdout.contains("Timestamp(µs, \"UTC\")"), "{stdout}");
}

#[test]
fn yaml_syntax_errors_are_located() {
    let ws = Workspace::generate(10, 0.0, 1);
    let err = refused(&ws, |t| {
        t.replace("  max_records: 8192", "  max_records: [8192")
    });
    assert!(
        err.contains("pipeline.yaml:1") || err.contains("pipeline.yaml:2"),
        "{err}"
    );
}

#[test]
fn unknown_keys_are_located_with_their_key_path() {
    let ws = Workspace::generate(10, 0.0, 1);
    let err = refused(&ws, |t| {
        t.replace("      on_miss: review", "      on_mis: review")
    });
    assert!(err.contains("on_mis"), "{err}");
    assert!(err.contains("stages[2]"), "{err}");
    let line = err
        .split("pipeline.yaml:")
        .nth(1)
        .unwrap()
        .split(':')
        .next()
        .unwrap();
    assert!(line.parse::<u32>().unwrap() > 50, "{err}");
}

#[test]
fn a_missing_schema_file_is_refused() {
    let ws = Workspace::generate(10, 0.0, 1);
    let err = refused(&ws, |t| {
        t.replace("order_created.v1.schema.json", "nope.json")
    });
    assert!(err.contains("stages[0].validate.schema"), "{err}");
    assert!(err.contains("nope.json"), "{err}");
}

#[test]
fn sql_that_does_not_compile_against_the_previous_stage_is_refused() {
    let ws = Workspace::generate(10, 0.0, 1);
    let err = refused(&ws, |t| t.replace("upper(currency)", "upper(curency)"));
    assert!(err.contains("stages[1].transform.sql"), "{err}");
    assert!(err.contains("curency"), "{err}");
    let err = refused(&ws, |t| {
        t.replace("sql: total > 500", "sql: total_cent > 500")
    });
    assert!(err.contains("stages[2].enrich.derive[0].sql"), "{err}");
    let err = refused(&ws, |t| {
        t.replace("sql: total < 50000", "sql: item_count < 50000")
    });
    assert!(
        err.contains("rules[1].sql"),
        "the rule sees validate's columns, not the transform's: {err}"
    );
}

#[test]
fn a_lookup_table_that_cannot_be_read_is_refused() {
    let ws = Workspace::generate(10, 0.0, 1);
    std::fs::remove_file(ws.path("input/customers.csv")).unwrap();
    let err = refused(&ws, |t| t);
    assert!(err.contains("stages[2].enrich.lookup.path"), "{err}");
    assert!(err.contains("customers.csv"), "{err}");
}

#[test]
fn a_partition_column_the_output_lacks_is_refused() {
    let ws = Workspace::generate(10, 0.0, 1);
    let err = refused(&ws, |t| {
        t.replace("partition_by: [event_date]", "partition_by: [event_day]")
    });
    assert!(err.contains("outputs[0].parquet.partition_by"), "{err}");
}

#[test]
fn run_refuses_a_bad_pipeline_before_reading_anything() {
    let ws = Workspace::generate(10, 0.0, 1);
    let path = ws.path("bad.yaml");
    std::fs::write(&path, "name: x\nsource: {}\n").unwrap();
    let out = ws.tributary(&["run", path.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("bad.yaml:"),
        "{}",
        text(&out.stderr)
    );
    assert!(!ws.path("out").exists(), "nothing was written");
}

/// The Kafka orders pipeline with `edit` applied, checked (no broker is contacted): (success, stdout, stderr).
fn check_kafka_edited(ws: &Workspace, edit: impl Fn(String) -> String) -> (bool, String, String) {
    let out = check_shipped(ws, "orders-kafka.yaml", "kafka.yaml", edit);
    (out.status.success(), text(&out.stdout), text(&out.stderr))
}

#[test]
fn the_kafka_pipeline_checks_and_exposes_message_metadata_to_stages() {
    let ws = Workspace::generate(10, 0.0, 1);
    let (ok, stdout, stderr) = check_kafka_edited(&ws, |t| t);
    assert!(ok, "{stderr}");
    assert!(stdout.contains("kafka_offset"), "{stdout}");

    // A stage may read any metadata column; a misspelt one is refused against the schema.
    let (ok, _, stderr) = check_kafka_edited(&ws, |t| t.replace("_offset  ", "_offest  "));
    assert!(!ok);
    assert!(stderr.contains("_offest"), "{stderr}");
    assert!(
        stderr.contains("_headers"),
        "lists the available columns: {stderr}"
    );
}

#[test]
fn kafka_settings_are_checked_before_anything_connects() {
    let ws = Workspace::generate(10, 0.0, 1);
    let cases: [(&str, &str, &str); 4] = [
        (
            "group: ${TRIBUTARY_GROUP:-tributary-orders}",
            "group: \"\"",
            "source.kafka.group",
        ),
        (
            "topics: [ \"${ORDERS_TOPIC:-orders}\" ]",
            "topics: [ \"^orders(\" ]",
            "source.kafka.topics[0]",
        ),
        (
            "commit_interval: ${TRIBUTARY_COMMIT_INTERVAL:-10s}",
            "commit_interval: soon",
            "commit_interval",
        ),
        ("dlq:\n  kafka:", "dlq:\n  path: /tmp/dlq\n  kafka:", "dlq"),
    ];
    for (from, to, key) in cases {
        let (ok, _, stderr) = check_kafka_edited(&ws, |t| {
            assert!(t.contains(from), "fixture text {from:?} is in the pipeline");
            t.replace(from, to)
        });
        assert!(!ok, "{to:?} should be refused");
        assert!(stderr.contains("kafka.yaml:"), "{stderr}");
        assert!(stderr.contains(key), "{to:?}: {stderr}");
    }
}

#[test]
fn the_s3_pipeline_checks_its_snowflake_key_alert_and_raw_zone_before_running() {
    let ws = Workspace::generate(10, 0.0, 1);
    let check = |edit: &dyn Fn(String) -> String| {
        let out = check_shipped(&ws, "orders-s3.yaml", "s3.yaml", edit);
        (out.status.success(), text(&out.stderr))
    };
    // The private key must exist and be a PKCS#8 RSA key.
    let key = ws.path("key.p8");
    std::fs::write(&key, "not a key").unwrap();
    let (ok, stderr) = check(&|t| {
        t.replace(
            "${SNOWFLAKE_PRIVATE_KEY_PATH:-/run/secrets/snowflake_key.p8}",
            key.to_str().unwrap(),
        )
    });
    assert!(
        !ok && stderr.contains("private_key_path") && stderr.contains("PKCS#8"),
        "{stderr}"
    );
    // `from` must name a Parquet output.
    let with_password = |t: String| {
        t.replace(
            "private_key_path: ${SNOWFLAKE_PRIVATE_KEY_PATH:-/run/secrets/snowflake_key.p8}",
            "password: x",
        )
    };
    let (ok, stderr) = check(&|t| with_password(t).replace("from: orders", "from: ordres"));
    assert!(
        !ok && stderr.contains("\"ordres\" is not a Parquet output"),
        "{stderr}"
    );
    // A threshold is a fraction.
    let (ok, stderr) = check(&|t| with_password(t).replace("threshold: 0.05", "threshold: 5"));
    assert!(
        !ok && stderr.contains("alerts.error_rate.threshold"),
        "{stderr}"
    );
    // The raw zone archives Kafka messages only.
    let out = check_shipped(&ws, "orders.yaml", "raw.yaml", |t| {
        t.replace(
            "\ndlq:",
            "  - raw:\n      name: raw\n      path: raw\n\ndlq:",
        )
    });
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("the source is not Kafka"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn destinations_that_share_a_directory_are_refused() {
    let ws = Workspace::generate(10, 0.0, 1);
    // DLQ and review in one folder: both would write `<stream>-<position>.ndjson`.
    let err = refused(&ws, |t| t.replace("/review\n", "/dlq\n"));
    assert!(err.contains("review.path"), "{err}");
    assert!(err.contains("same directory as dlq.path"), "{err}");
    // A dead-letter folder inside the Parquet output: readers would find NDJSON there.
    let err = refused(&ws, |t| t.replace("out}/dlq\n", "out}/orders/dlq\n"));
    assert!(err.contains("dlq.path"), "{err}");
    assert!(err.contains("overlaps outputs[0].path"), "{err}");
}

#[test]
fn check_warns_about_topics_it_would_create_with_one_replica() {
    let ws = Workspace::generate(10, 0.0, 1);
    let (ok, _, stderr) = check_kafka_edited(&ws, |t| t);
    assert!(ok, "{stderr}");
    for topic in ["dlq: topic orders.dlq", "review: topic orders.review"] {
        assert!(stderr.contains(topic), "{stderr}");
    }
    assert!(stderr.contains("replication factor 1"), "{stderr}");
    // Said explicitly, it is the user's choice: no warning.
    let (ok, _, stderr) = check_kafka_edited(&ws, |t| {
        t.replace(
            "    topic: ${ORDERS_TOPIC:-orders}.dlq\n",
            "    topic: ${ORDERS_TOPIC:-orders}.dlq\n    replication_factor: 3\n    partitions: 6\n",
        )
        .replace(
            "    topic: ${ORDERS_TOPIC:-orders}.review\n",
            "    topic: ${ORDERS_TOPIC:-orders}.review\n    replication_factor: 1\n",
        )
    });
    assert!(ok, "{stderr}");
    assert!(!stderr.contains("replication factor 1"), "{stderr}");
}

//! The bundled orders pipeline (and the benchmarks' sessions pipeline) on generated data, end to end.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use arrow::datatypes::{DataType, TimeUnit};
use base64::Engine;
use tributary_engine::workload::{Expected, InvalidClass, Workload};

use crate::support::*;

const EVENTS: u64 = 30_000;

#[test]
fn every_record_leaves_through_exactly_one_door_and_reruns_are_idempotent() {
    let ws = Workspace::generate(EVENTS, 0.03, 11);
    let summary = ws.run_orders();

    // The generator's verdicts.
    let mut want_out = BTreeSet::new();
    let mut want_review = BTreeSet::new();
    let mut want_dlq: BTreeMap<u64, InvalidClass> = BTreeMap::new();
    for (i, e) in ws.expected.iter().enumerate() {
        match e {
            Expected::Output { event_id } => {
                assert!(want_out.insert(event_id.clone()), "generator repeats ids")
            }
            Expected::Review { event_id, .. } => assert!(want_review.insert(event_id.clone())),
            Expected::Dlq(class) => {
                want_dlq.insert(i as u64 + 1, *class);
            }
        }
    }
    let classes: BTreeSet<InvalidClass> = want_dlq.values().copied().collect();
    assert_eq!(
        classes.len(),
        InvalidClass::COMMON.len() + 2,
        "every bad-input class is exercised"
    );

    // Output: exactly the valid events, once each.
    let out_ids = parquet_strings(&ws.path("out/orders"), "event_id");
    let out_set: BTreeSet<String> = out_ids.iter().cloned().collect();
    assert_eq!(out_ids.len(), out_set.len(), "an event was written twice");
    assert_eq!(out_set, want_out);

    // Review: exactly the ambiguous events.
    let review = dead_letters(&ws.path("out/review"));
    let review_ids: BTreeSet<String> = review
        .iter()
        .map(|l| {
            let original: serde_json::Value =
                serde_json::from_str(l["original"].as_str().unwrap()).unwrap();
            original["event_id"].as_str().unwrap().to_string()
        })
        .collect();
    assert_eq!(review.len(), review_ids.len());
    assert_eq!(review_ids, want_review);

    // DLQ: every invalid line once, with the expected rule and its original bytes.
    let dlq = dead_letters(&ws.path("out/dlq"));
    let input = std::fs::read(ws.path("input/orders.ndjson")).unwrap();
    let lines: Vec<&[u8]> = input.split(|b| *b == b'\n').collect();
    let mut seen = BTreeSet::new();
    for letter in &dlq {
        let line = letter["position"].as_u64().unwrap();
        assert!(seen.insert(line), "line {line} is in the DLQ twice");
        let class = want_dlq
            .get(&line)
            .unwrap_or_else(|| panic!("valid line {line} in the DLQ: {letter}"));
        assert_eq!(
            letter["rule"],
            class.expected_rule(),
            "line {line}: {letter}"
        );
        assert_eq!(letter["stage"], "validate");
        assert_eq!(letter["pipeline"], "orders");
        assert!(
            letter["source"]
                .as_str()
                .unwrap()
                .ends_with(&format!("orders.ndjson:{line}"))
        );
        assert!(!letter["reason"].as_str().unwrap().is_empty());
        let original = match letter["original"].as_str() {
            Some(text) => text.as_bytes().to_vec(),
            None => base64::engine::general_purpose::STANDARD
                .decode(letter["original_base64"].as_str().unwrap())
                .unwrap(),
        };
        assert_eq!(
            original,
            lines[line as usize - 1],
            "line {line}: original bytes kept exactly"
        );
    }
    assert_eq!(seen.len(), want_dlq.len());

    // The summary adds up and agrees with the files.
    let totals = &summary["totals"];
    assert_eq!(totals["records_in"], EVENTS);
    assert_eq!(totals["records_out"], want_out.len() as u64);
    assert_eq!(totals["review"], want_review.len() as u64);
    assert_eq!(totals["dlq"], want_dlq.len() as u64);
    for stage in totals["stages"].as_array().unwrap() {
        let (i, o, d, r) = (
            stage["records_in"].as_u64().unwrap(),
            stage["records_out"].as_u64().unwrap(),
            stage["dlq"].as_u64().unwrap(),
            stage["review"].as_u64().unwrap(),
        );
        assert_eq!(i, o + d + r, "stage counts add up: {stage}");
    }

    // Column types are as declared.
    let files = files_under(&ws.path("out/orders"));
    assert!(
        files
            .iter()
            .all(|f| f.to_str().unwrap().starts_with("event_date=2026-11-"))
    );
    let batch = &read_parquet(&ws.path("out/orders").join(&files[0]))[0];
    let schema = batch.schema();
    let ty = |name: &str| schema.field_with_name(name).unwrap().data_type().clone();
    assert_eq!(
        ty("occurred_at"),
        DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()))
    );
    assert_eq!(ty("total_cents"), DataType::Int64);
    assert_eq!(ty("item_count"), DataType::Int64);
    assert_eq!(ty("total"), DataType::Float64);
    assert_eq!(ty("is_high_value"), DataType::Boolean);
    assert_eq!(ty("segment"), DataType::Utf8);
    assert!(schema.field_with_name("items").is_err(), "items is dropped");
    assert!(
        schema.field_with_name("event_date").is_err(),
        "event_date lives in the path"
    );
    let currency = parquet_strings(&ws.path("out/orders"), "currency");
    assert!(
        currency
            .iter()
            .all(|c| c.chars().all(|ch| ch.is_ascii_uppercase()))
    );

    // A second run writes the same files with the same rows.
    let first: Vec<_> = files
        .iter()
        .map(|f| (f.clone(), read_parquet(&ws.path("out/orders").join(f))))
        .collect();
    let first_dlq = files_under(&ws.path("out/dlq"));
    ws.run_orders();
    let second: Vec<_> = files_under(&ws.path("out/orders"))
        .into_iter()
        .map(|f| (f.clone(), read_parquet(&ws.path("out/orders").join(&f))))
        .collect();
    assert_eq!(
        first, second,
        "a rerun overwrites the same files with the same rows"
    );
    assert_eq!(first_dlq, files_under(&ws.path("out/dlq")));
}

#[test]
fn query_reads_the_output_with_partitions_as_columns() {
    let ws = Workspace::generate(3_000, 0.0, 5);
    ws.run_orders();
    let pipeline = orders_pipeline();
    let out = ws.tributary(&[
        "query",
        "--pipeline",
        pipeline.to_str().unwrap(),
        "SELECT count(*) AS n, count(DISTINCT event_date) AS days, min(event_date) AS first FROM orders",
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    let outputs = ws
        .expected
        .iter()
        .filter(|e| matches!(e, Expected::Output { .. }))
        .count();
    assert!(stdout.contains(&format!("| {outputs} ")), "{stdout}");
    assert!(stdout.contains("2026-11-01"), "{stdout}");
}

#[test]
fn ctrl_c_drains_in_flight_batches_and_exits_cleanly() {
    let ws = Workspace::generate(150_000, 0.02, 3);
    let summary_path = ws.path("summary.json");
    let pipeline = orders_pipeline();
    let mut child = ws
        .command(&[
            "run",
            pipeline.to_str().unwrap(),
            "--summary-json",
            summary_path.to_str().unwrap(),
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(1500));
    let _ = std::process::Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status();
    let status = child.wait().unwrap();
    assert!(status.success(), "exit status {status:?}");
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(summary_path).unwrap()).unwrap();
    let t = &summary["totals"];
    let sum = t["records_out"].as_u64().unwrap()
        + t["dlq"].as_u64().unwrap()
        + t["review"].as_u64().unwrap();
    assert_eq!(
        t["records_in"].as_u64().unwrap(),
        sum,
        "what was read left through a door"
    );
    let written = parquet_strings(&ws.path("out/orders"), "event_id").len() as u64;
    assert_eq!(
        written,
        t["records_out"].as_u64().unwrap(),
        "every open file was published"
    );
    let leftovers: Vec<_> = files_under(&ws.path("out"))
        .into_iter()
        .filter(|f| {
            !(f.extension()
                .is_some_and(|e| e == "parquet" || e == "ndjson"))
        })
        .collect();
    assert!(leftovers.is_empty(), "no half-written files: {leftovers:?}");
}

#[test]
fn the_demo_runs_from_any_directory_and_prints_a_summary_and_a_query() {
    let ws = Workspace::generate(1, 0.0, 1);
    let dir = ws.path("demo");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_tributary"))
        .args(["demo", "--events", "5000", "--dir", dir.to_str().unwrap()])
        .current_dir(ws.path("input"))
        .output()
        .unwrap();
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", text(&out.stderr));
    assert!(stdout.contains("records in         5000"), "{stdout}");
    assert!(stdout.contains("(adds up)"), "{stdout}");
    assert!(stdout.contains("| event_date | orders |"), "{stdout}");
    assert!(!files_under(&dir.join("out/orders")).is_empty());
    assert!(!files_under(&dir.join("out/dlq")).is_empty());
    assert!(!files_under(&dir.join("out/review")).is_empty());
}

#[test]
fn the_sessions_workload_of_the_benchmarks_routes_every_record_as_generated() {
    let ws = Workspace::generate_workload(Workload::Sessions, 6_000, 0.05, 5);
    let pipeline = Path::new(env!("CARGO_MANIFEST_DIR")).join("../benches/pipelines/sessions.yaml");
    let summary = ws.run_pipeline(&pipeline);

    let want_out: BTreeSet<String> = ws
        .expected
        .iter()
        .filter_map(|e| match e {
            Expected::Output { event_id } => Some(event_id.clone()),
            _ => None,
        })
        .collect();
    let want_review = ws
        .expected
        .iter()
        .filter(|e| matches!(e, Expected::Review { .. }))
        .count();
    let want_dlq = ws
        .expected
        .iter()
        .filter(|e| matches!(e, Expected::Dlq(_)))
        .count();
    assert!(
        want_dlq > 100 && want_review > 20,
        "both doors are exercised"
    );

    let out_ids = parquet_strings(&ws.path("out/sessions"), "event_id");
    let out_set: BTreeSet<String> = out_ids.iter().cloned().collect();
    assert_eq!(out_ids.len(), out_set.len(), "an event was written twice");
    assert_eq!(out_set, want_out);
    assert_eq!(dead_letters(&ws.path("out/dlq")).len(), want_dlq);
    assert_eq!(dead_letters(&ws.path("out/review")).len(), want_review);
    assert_eq!(summary["totals"]["records_in"], 6_000);

    // The nested pages survive as a list of structs, five levels deep.
    let files = files_under(&ws.path("out/sessions"));
    let batch = &read_parquet(&ws.path("out/sessions").join(&files[0]))[0];
    let pages = batch
        .schema()
        .field_with_name("pages")
        .unwrap()
        .data_type()
        .to_string();
    assert!(pages.contains("target"), "{pages}");
}

use std::sync::Arc;

use arrow::array::{Array, Int64Array, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Schema};

use arrow::array::AsArray;

use super::*;

fn customers(segment_of_c1: &str) -> LookupTable {
    let schema = Arc::new(Schema::new(vec![
        Field::new("customer_id", DataType::Utf8, false),
        Field::new("segment", DataType::Utf8, true),
        Field::new("region", DataType::Utf8, true),
    ]));
    let batch = RecordBatch::try_new(
        schema,
        vec![
            Arc::new(StringArray::from(vec!["C1", "C2"])),
            Arc::new(StringArray::from(vec![segment_of_c1, "smb"])),
            Arc::new(StringArray::from(vec!["emea", "na"])),
        ],
    )
    .unwrap();
    LookupTable::new(batch, &["customer_id".to_string()]).unwrap()
}

fn orders() -> RecordBatch {
    let schema = Arc::new(Schema::new(vec![
        Field::new("customer_id", DataType::Utf8, true),
        Field::new("total", DataType::Int64, false),
    ]));
    RecordBatch::try_new(
        schema,
        vec![
            Arc::new(StringArray::from(vec![
                Some("C2"),
                Some("C9"),
                None,
                Some("C1"),
            ])),
            Arc::new(Int64Array::from(vec![10, 20, 30, 900])),
        ],
    )
    .unwrap()
}

fn spec(on_miss: OnMiss) -> EnrichSpec {
    EnrichSpec {
        name: "customers".into(),
        keys: vec![("customer_id".into(), "customer_id".into())],
        columns: vec!["segment".into()],
        on_miss,
        on_error: OnMiss::Review,
        derive: vec![("big".into(), "total > 500".into())],
    }
}

#[test]
fn rows_the_lookup_could_not_answer_follow_on_error_not_on_miss() {
    let batch = orders();
    let table = SharedTable::new(customers("vip"));
    let mut spec = spec(OnMiss::Null);
    spec.on_error = OnMiss::Dlq;
    let stage = Enrich::new(spec, table.clone(), &batch.schema()).unwrap();
    // The answer for this batch holds C1 only; C2's lookup failed.
    let answered = customers("gold");
    let failed = vec![(
        0,
        "lookup customers did not answer: connection refused".to_string(),
    )];
    let out = stage.apply_with(&batch, &answered, &failed).unwrap();
    let rows: Vec<(usize, Route, &str)> = out
        .rejects
        .iter()
        .map(|r| (r.row, r.route, r.rule.as_str()))
        .collect();
    assert_eq!(rows, vec![(0, Route::Dlq, "customers:error")]);
    assert!(out.rejects[0].reason.contains("connection refused"));
    // C9 and the null key are misses, kept with nulls (on_miss: null).
    assert_eq!(out.batch.num_rows(), 3);
    let segment = out.batch.column(2).as_string::<i32>();
    assert_eq!(
        segment.iter().collect::<Vec<_>>(),
        vec![None, None, Some("gold")]
    );
}

#[test]
fn matches_are_joined_and_misses_follow_the_policy() {
    let batch = orders();
    let table = SharedTable::new(customers("vip"));
    let stage = Enrich::new(spec(OnMiss::Review), table, &batch.schema()).unwrap();
    let out = stage.apply(&batch).unwrap();
    assert_eq!(out.batch.num_rows(), 2);
    let rows: Vec<(usize, Route)> = out.rejects.iter().map(|r| (r.row, r.route)).collect();
    assert_eq!(rows, vec![(1, Route::Review), (2, Route::Review)]);
    assert!(
        out.rejects[0].reason.contains("customer_id=\"C9\""),
        "{}",
        out.rejects[0].reason
    );
    let segment = out.batch.column(2).as_string::<i32>();
    assert_eq!(
        segment.iter().collect::<Vec<_>>(),
        vec![Some("smb"), Some("vip")]
    );
    let big = out.batch.column(3).as_boolean();
    assert_eq!(
        big.iter().collect::<Vec<_>>(),
        vec![Some(false), Some(true)]
    );

    let dlq = Enrich::new(
        spec(OnMiss::Dlq),
        SharedTable::new(customers("vip")),
        &batch.schema(),
    )
    .unwrap();
    assert!(
        dlq.apply(&batch)
            .unwrap()
            .rejects
            .iter()
            .all(|r| r.route == Route::Dlq)
    );

    let keep = Enrich::new(
        spec(OnMiss::Null),
        SharedTable::new(customers("vip")),
        &batch.schema(),
    )
    .unwrap();
    let out = keep.apply(&batch).unwrap();
    assert_eq!((out.batch.num_rows(), out.rejects.len()), (4, 0));
    assert!(out.batch.column(2).is_null(1));
}

#[test]
fn a_refreshed_snapshot_is_used_by_the_next_batch() {
    let batch = orders();
    let table = SharedTable::new(customers("vip"));
    let stage = Enrich::new(spec(OnMiss::Null), table.clone(), &batch.schema()).unwrap();
    table.replace(customers("gold")).unwrap();
    let out = stage.apply(&batch).unwrap();
    let segment = out.batch.column(2).as_string::<i32>();
    assert_eq!(segment.value(3), "gold");
}

#[test]
fn a_snapshot_with_another_schema_is_refused() {
    let table = SharedTable::new(customers("vip"));
    let other = RecordBatch::try_new(
        Arc::new(Schema::new(vec![Field::new(
            "customer_id",
            DataType::Utf8,
            false,
        )])),
        vec![Arc::new(StringArray::from(vec!["C1"]))],
    )
    .unwrap();
    let other = LookupTable::new(other, &["customer_id".to_string()]).unwrap();
    assert!(matches!(
        table.replace(other),
        Err(TableError::SchemaChanged { .. })
    ));
}

#[test]
fn duplicate_keys_and_missing_columns_are_refused() {
    let batch = RecordBatch::try_new(
        Arc::new(Schema::new(vec![Field::new("k", DataType::Utf8, false)])),
        vec![Arc::new(StringArray::from(vec!["a", "a"]))],
    )
    .unwrap();
    assert!(matches!(
        LookupTable::new(batch, &["k".to_string()]),
        Err(TableError::DuplicateKey {
            first: 0,
            second: 1,
            ..
        })
    ));
    let orders = orders();
    let mut bad = spec(OnMiss::Null);
    bad.columns = vec!["nope".into()];
    let err = Enrich::new(bad, SharedTable::new(customers("vip")), &orders.schema()).unwrap_err();
    assert!(err.to_string().contains("nope"), "{err}");
    let mut bad = spec(OnMiss::Null);
    bad.derive = vec![("x".into(), "missing_col + 1".into())];
    assert!(matches!(
        Enrich::new(bad, SharedTable::new(customers("vip")), &orders.schema()),
        Err(EnrichError::Derive { .. })
    ));
}

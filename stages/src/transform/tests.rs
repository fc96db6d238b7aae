use std::sync::Arc;

use arrow::array::{Array, Float64Array, RecordBatch, StringArray, StructArray};
use arrow::datatypes::{DataType, Field, Fields, Schema, SchemaRef};

use arrow::array::AsArray;
use arrow::datatypes::Int64Type;

use super::*;

fn input() -> RecordBatch {
    let ship_fields = Fields::from(vec![Field::new("country", DataType::Utf8, true)]);
    let schema: SchemaRef = Arc::new(Schema::new(vec![
        Field::new("currency", DataType::Utf8, false),
        Field::new("total", DataType::Float64, true),
        Field::new("code", DataType::Utf8, true),
        Field::new("ship", DataType::Struct(ship_fields.clone()), true),
    ]));
    let ship = StructArray::new(
        ship_fields,
        vec![Arc::new(StringArray::from(vec![
            Some("DE"),
            None,
            Some("US"),
        ]))],
        None,
    );
    RecordBatch::try_new(
        schema,
        vec![
            Arc::new(StringArray::from(vec!["eur", "USD", "gbp"])),
            Arc::new(Float64Array::from(vec![Some(12.345), None, Some(1.0)])),
            Arc::new(StringArray::from(vec!["1", "2", "x"])),
            Arc::new(ship),
        ],
    )
    .unwrap()
}

#[test]
fn sql_transforms_each_row_and_knows_its_schema_up_front() {
    let batch = input();
    let t = Transform::new(
        &TransformSpec::Sql(
            "SELECT upper(currency) AS currency, CAST(round(total * 100) AS BIGINT) AS cents, ship['country'] AS c FROM input".into(),
        ),
        &batch.schema(),
    )
    .unwrap();
    let schema = t.output_schema();
    assert_eq!(schema.field(1).data_type(), &DataType::Int64);
    let out = t.apply(&batch).unwrap();
    assert!(out.rejects.is_empty());
    let cur = out.batch.column(0).as_string::<i32>();
    assert_eq!(
        cur.iter().collect::<Vec<_>>(),
        vec![Some("EUR"), Some("USD"), Some("GBP")]
    );
    let cents = out.batch.column(1).as_primitive::<Int64Type>();
    assert_eq!(
        cents.iter().collect::<Vec<_>>(),
        vec![Some(1235), None, Some(100)]
    );
}

#[test]
fn a_row_that_fails_is_rejected_alone() {
    let batch = input();
    let t = Transform::new(
        &TransformSpec::Sql("SELECT CAST(code AS BIGINT) AS code FROM input".into()),
        &batch.schema(),
    )
    .unwrap();
    let out = t.apply(&batch).unwrap();
    assert_eq!(out.batch.num_rows(), 2);
    assert_eq!(out.rejects.len(), 1);
    assert_eq!((out.rejects[0].row, out.rejects[0].route), (2, Route::Dlq));
    assert!(
        out.rejects[0].reason.contains('x'),
        "{}",
        out.rejects[0].reason
    );
}

#[test]
fn statements_that_drop_or_merge_rows_are_refused() {
    let schema = input().schema();
    for sql in [
        "SELECT currency FROM input WHERE total > 1",
        "SELECT currency, count(*) FROM input GROUP BY currency",
        "SELECT currency FROM input ORDER BY total",
        "SELECT currency FROM input LIMIT 1",
    ] {
        let err = Transform::new(&TransformSpec::Sql(sql.into()), &schema).unwrap_err();
        assert!(
            matches!(err, TransformError::Sql(SqlError::NotRowWise(_))),
            "{sql}: {err}"
        );
    }
    let err = Transform::new(
        &TransformSpec::Sql("SELECT nope FROM input".into()),
        &schema,
    )
    .unwrap_err();
    assert!(err.to_string().contains("nope"), "{err}");
}

#[test]
fn mappings_rename_cast_default_drop_and_flatten() {
    let batch = input();
    let mapping = MappingSpec {
        flatten: vec!["ship".into()],
        defaults: vec![("total".into(), serde_json::json!(0))],
        cast: vec![("total".into(), "BIGINT".into())],
        rename: vec![("ship_country".into(), "country".into())],
        drop: vec!["code".into()],
    };
    let t = Transform::new(&TransformSpec::Mapping(mapping), &batch.schema()).unwrap();
    let names: Vec<String> = t
        .output_schema()
        .fields()
        .iter()
        .map(|f| f.name().clone())
        .collect();
    assert_eq!(names, vec!["currency", "total", "country"]);
    let out = t.apply(&batch).unwrap();
    let total = out.batch.column(1).as_primitive::<Int64Type>();
    assert_eq!(
        total.iter().collect::<Vec<_>>(),
        vec![Some(12), Some(0), Some(1)]
    );
    let country = out.batch.column(2).as_string::<i32>();
    assert!(country.is_null(1));
}

#[test]
fn mappings_naming_unknown_columns_are_refused() {
    let schema = input().schema();
    let mapping = MappingSpec {
        rename: vec![("nope".into(), "x".into())],
        ..MappingSpec::default()
    };
    let err = Transform::new(&TransformSpec::Mapping(mapping), &schema).unwrap_err();
    assert!(
        err.to_string().contains("rename: no column \"nope\""),
        "{err}"
    );
    let mapping = MappingSpec {
        flatten: vec!["currency".into()],
        ..MappingSpec::default()
    };
    assert!(Transform::new(&TransformSpec::Mapping(mapping), &schema).is_err());
}

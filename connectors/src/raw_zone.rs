//! The raw zone: every message exactly as consumed (payload bytes, key,
//! headers, topic, partition, offset, timestamp), one row per message, with
//! a `date` column (UTC, from the message timestamp) to partition by, so
//! any period can be replayed later.

use std::sync::Arc;

use arrow::array::{Array, ArrayRef, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use chrono::{TimeZone, Utc};

use crate::kafka::meta;
use crate::source::RawBatch;

/// The column the raw zone is partitioned by.
pub const DATE_COLUMN: &str = "date";

/// Columns of a raw-zone file (before partitioning removes `date`).
pub fn schema() -> SchemaRef {
    let base = Schema::new(vec![Field::new("payload", DataType::Binary, true)]);
    let with_meta = meta::extend_schema(&base);
    let mut fields: Vec<_> = with_meta.fields().iter().cloned().collect();
    fields.push(Arc::new(Field::new(DATE_COLUMN, DataType::Utf8, false)));
    Arc::new(Schema::new(fields))
}

/// `raw` as raw-zone rows; `now_ms` dates messages without a timestamp (and file records).
pub fn batch(raw: &RawBatch, now_ms: i64) -> Result<RecordBatch, arrow::error::ArrowError> {
    let payloads: ArrayRef = Arc::new(raw.payloads.clone());
    let base = RecordBatch::try_new(
        Arc::new(Schema::new(vec![Field::new(
            "payload",
            DataType::Binary,
            true,
        )])),
        vec![payloads],
    )?;
    let rows: Vec<usize> = (0..raw.len()).collect();
    let meta = raw.meta.as_ref().ok_or_else(|| {
        arrow::error::ArrowError::InvalidArgumentError(
            "the raw zone archives Kafka messages; this batch has no Kafka metadata".into(),
        )
    })?;
    let with_meta = meta.append_columns(&base, &rows, &raw.positions)?;
    let timestamps = meta.timestamps();
    let dates = StringArray::from_iter_values((0..raw.len()).map(|i| {
        let ms = if timestamps.is_valid(i) {
            timestamps.value(i)
        } else {
            now_ms
        };
        Utc.timestamp_millis_opt(ms)
            .single()
            .unwrap_or_default()
            .format("%Y-%m-%d")
            .to_string()
    }));
    let mut columns = with_meta.columns().to_vec();
    columns.push(Arc::new(dates));
    RecordBatch::try_new(schema(), columns)
}

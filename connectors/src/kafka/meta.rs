//! Kafka message metadata as Arrow columns, so stages can use it.
//!
//! Every record read from Kafka carries `_key` (binary, null without a key),
//! `_topic`, `_partition`, `_offset`, `_timestamp` (ms, UTC; null when the
//! broker gave none) and `_headers` (a map of header name to binary value).
//!
//! Headers are read from librdkafka directly: a header name need not be
//! UTF-8 on the wire, and rdkafka's own accessor panics on one that is not
//! (it would stop the polling thread at the same offset on every restart).
//! Such a record is marked [`malformed`](KafkaMeta::malformed), and the
//! engine sends it to the DLQ with the reason; `_headers` keeps the name
//! with invalid bytes replaced.

use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, BinaryArray, BinaryBuilder, Int32Array, Int64Array, MapArray, MapBuilder,
    RecordBatch, StringArray, StringBuilder, TimestampMillisecondArray, UInt32Array,
};
use arrow::compute::take;
use arrow::datatypes::{DataType, Field, FieldRef, Schema, SchemaRef, TimeUnit};
use rdkafka::message::{BorrowedHeaders, Headers, Message, OwnedHeaders};

use crate::dead_letter::{KafkaHeader, KafkaOrigin};

/// Names of the metadata columns, in the order they are appended.
pub const COLUMNS: [&str; 6] = [
    "_key",
    "_topic",
    "_partition",
    "_offset",
    "_timestamp",
    "_headers",
];

fn headers_builder() -> MapBuilder<StringBuilder, BinaryBuilder> {
    MapBuilder::new(None, StringBuilder::new(), BinaryBuilder::new())
}

/// The metadata fields appended after the validated columns.
pub fn fields() -> Vec<FieldRef> {
    let headers = headers_builder().finish();
    vec![
        Arc::new(Field::new("_key", DataType::Binary, true)),
        Arc::new(Field::new("_topic", DataType::Utf8, false)),
        Arc::new(Field::new("_partition", DataType::Int32, false)),
        Arc::new(Field::new("_offset", DataType::Int64, false)),
        Arc::new(Field::new(
            "_timestamp",
            DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into())),
            true,
        )),
        Arc::new(Field::new("_headers", headers.data_type().clone(), false)),
    ]
}

/// `schema` with the metadata fields appended.
pub fn extend_schema(schema: &Schema) -> SchemaRef {
    let mut all: Vec<FieldRef> = schema.fields().iter().cloned().collect();
    all.extend(fields());
    Arc::new(Schema::new_with_metadata(all, schema.metadata().clone()))
}

/// Metadata of the records of one batch from one partition.
#[derive(Debug, Clone)]
pub struct KafkaMeta {
    /// The topic.
    pub topic: Arc<str>,
    /// The partition.
    pub partition: i32,
    /// Keys, null where a message has none.
    pub keys: BinaryArray,
    timestamps: TimestampMillisecondArray,
    headers: MapArray,
    /// For replayed records, each row's own topic, partition and offset
    /// (a replay mixes partitions); otherwise `topic`, `partition` and the
    /// record's position.
    origins: Option<Origins>,
    /// Rows whose metadata cannot be carried as it is, with why (ascending rows).
    malformed: Vec<(usize, String)>,
}

/// One header as the broker sent it.
pub(crate) struct RawHeader<'a> {
    /// The name's bytes (not necessarily UTF-8).
    pub(crate) name: &'a [u8],
    /// The value, `None` for a null value.
    pub(crate) value: Option<&'a [u8]>,
}

/// Headers librdkafka holds, read without assuming UTF-8 names.
pub(crate) trait NativeHeaders {
    /// The borrowed view librdkafka's functions take.
    fn native(&self) -> &BorrowedHeaders;
}

impl NativeHeaders for BorrowedHeaders {
    fn native(&self) -> &BorrowedHeaders {
        self
    }
}

impl NativeHeaders for OwnedHeaders {
    fn native(&self) -> &BorrowedHeaders {
        self.as_borrowed()
    }
}

/// Every header of a message, in order.
#[allow(unsafe_code)] // librdkafka's raw header list; see the SAFETY notes.
pub(crate) fn raw_headers(headers: &impl NativeHeaders) -> Vec<RawHeader<'_>> {
    use rdkafka::bindings as rd;
    let headers = headers.native();
    // A `&BorrowedHeaders` is librdkafka's `rd_kafka_headers_t *` (rdkafka
    // converts it the same way).
    let native = std::ptr::from_ref(headers).cast::<rd::rd_kafka_headers_t>();
    let mut all = Vec::with_capacity(headers.count());
    for idx in 0..headers.count() {
        let (mut name, mut value, mut size) = (std::ptr::null(), std::ptr::null(), 0usize);
        // SAFETY: `native` is a live header list borrowed for the lifetime of
        // `headers`; librdkafka writes pointers into that list, which stay
        // valid while it is borrowed.
        let err =
            unsafe { rd::rd_kafka_header_get_all(native, idx, &mut name, &mut value, &mut size) };
        if err != rd::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR || name.is_null() {
            break;
        }
        // SAFETY: librdkafka's header names are NUL-terminated, and values are
        // `size` bytes long (or null); both live as long as the list.
        let (name, value) = unsafe {
            (
                std::ffi::CStr::from_ptr(name).to_bytes(),
                (!value.is_null()).then(|| std::slice::from_raw_parts(value.cast::<u8>(), size)),
            )
        };
        all.push(RawHeader { name, value });
    }
    all
}

/// Why a header name cannot be carried as it is, if it cannot.
fn header_problem(index: usize, count: usize, name: &[u8]) -> Option<String> {
    if std::str::from_utf8(name).is_ok() {
        return None;
    }
    let shown: Vec<String> = name.iter().take(32).map(|b| format!("{b:02x}")).collect();
    let more = if name.len() > 32 { " …" } else { "" };
    Some(format!(
        "kafka header {} of {count}: the name is not UTF-8 (bytes {}{more})",
        index + 1,
        shown.join(" ")
    ))
}

/// Per-row topic, partition and offset.
#[derive(Debug, Clone)]
struct Origins {
    topics: StringArray,
    partitions: Int32Array,
    offsets: Int64Array,
}

impl Origins {
    fn slice(&self, offset: usize, len: usize) -> Origins {
        Origins {
            topics: self.topics.slice(offset, len),
            partitions: self.partitions.slice(offset, len),
            offsets: self.offsets.slice(offset, len),
        }
    }
}

impl KafkaMeta {
    /// The topic, partition and offset of record `row`, whose position in the batch's partition is `position`.
    pub fn source(&self, row: usize, position: u64) -> (&str, i32, i64) {
        match &self.origins {
            Some(o) => (
                o.topics.value(row),
                o.partitions.value(row),
                o.offsets.value(row),
            ),
            None => (&self.topic, self.partition, position as i64),
        }
    }

    /// The timestamp of record `row` (ms since the epoch), if any.
    pub fn timestamp(&self, row: usize) -> Option<i64> {
        self.timestamps
            .is_valid(row)
            .then(|| self.timestamps.value(row))
    }

    /// The key of record `row`, if any.
    pub fn key(&self, row: usize) -> Option<&[u8]> {
        self.keys.is_valid(row).then(|| self.keys.value(row))
    }

    /// Message timestamps (milliseconds since the epoch, UTC).
    pub fn timestamps(&self) -> &TimestampMillisecondArray {
        &self.timestamps
    }

    /// Records `offset..offset + len`.
    pub fn slice(&self, offset: usize, len: usize) -> KafkaMeta {
        KafkaMeta {
            topic: self.topic.clone(),
            partition: self.partition,
            keys: self.keys.slice(offset, len),
            timestamps: self.timestamps.slice(offset, len),
            headers: self.headers.slice(offset, len),
            origins: self.origins.as_ref().map(|o| o.slice(offset, len)),
            malformed: self
                .malformed
                .iter()
                .filter(|(row, _)| (offset..offset + len).contains(row))
                .map(|(row, why)| (row - offset, why.clone()))
                .collect(),
        }
    }

    /// Rows whose metadata is malformed (a header name that is not UTF-8),
    /// with why: they go to the DLQ whatever their value holds.
    pub fn malformed(&self) -> &[(usize, String)] {
        &self.malformed
    }

    /// The headers of record `row` as (name, value) pairs.
    pub fn headers(&self, row: usize) -> Vec<(String, Option<Vec<u8>>)> {
        let entries = self.headers.value(row);
        let names = entries.column(0).as_any().downcast_ref::<StringArray>();
        let values = entries.column(1).as_any().downcast_ref::<BinaryArray>();
        match (names, values) {
            (Some(names), Some(values)) => (0..names.len())
                .map(|i| {
                    (
                        names.value(i).to_string(),
                        values.is_valid(i).then(|| values.value(i).to_vec()),
                    )
                })
                .collect(),
            _ => Vec::new(),
        }
    }

    /// Record `row` as a [`KafkaOrigin`], for a dead letter.
    pub fn origin(&self, row: usize, position: u64) -> KafkaOrigin {
        let (topic, partition, offset) = self.source(row, position);
        KafkaOrigin {
            topic: topic.to_string(),
            partition,
            offset,
            timestamp_ms: self.timestamp(row),
            key: self.key(row).map(<[u8]>::to_vec),
            headers: self
                .headers(row)
                .into_iter()
                .map(|(name, value)| KafkaHeader { name, value })
                .collect(),
        }
    }

    /// `batch` with the metadata columns of raw rows `rows` appended; `offsets[r]` is raw row r's offset.
    pub fn append_columns(
        &self,
        batch: &RecordBatch,
        rows: &[usize],
        offsets: &[u64],
    ) -> Result<RecordBatch, arrow::error::ArrowError> {
        let indices = UInt32Array::from_iter_values(rows.iter().map(|r| *r as u32));
        let n = rows.len();
        let mut columns: Vec<ArrayRef> = batch.columns().to_vec();
        columns.push(take(&self.keys, &indices, None)?);
        match &self.origins {
            Some(o) => {
                columns.push(take(&o.topics, &indices, None)?);
                columns.push(take(&o.partitions, &indices, None)?);
                columns.push(take(&o.offsets, &indices, None)?);
            }
            None => {
                columns.push(Arc::new(StringArray::from_iter_values(
                    std::iter::repeat_n(&*self.topic, n),
                )));
                columns.push(Arc::new(Int32Array::from(vec![self.partition; n])));
                columns.push(Arc::new(Int64Array::from_iter_values(
                    rows.iter().map(|r| offsets[*r] as i64),
                )));
            }
        }
        columns.push(take(&self.timestamps, &indices, None)?);
        columns.push(take(&self.headers, &indices, None)?);
        RecordBatch::try_new(extend_schema(&batch.schema()), columns)
    }
}

/// Collects metadata while messages are appended to a batch.
pub(crate) struct MetaBuilder {
    topic: Arc<str>,
    partition: i32,
    keys: BinaryBuilder,
    timestamps: Vec<Option<i64>>,
    headers: MapBuilder<StringBuilder, BinaryBuilder>,
    origins: Option<(StringBuilder, Vec<i32>, Vec<i64>)>,
    rows: usize,
    malformed: Vec<(usize, String)>,
}

impl MetaBuilder {
    pub(crate) fn new(topic: Arc<str>, partition: i32) -> Self {
        MetaBuilder {
            topic,
            partition,
            keys: BinaryBuilder::new(),
            timestamps: Vec::new(),
            headers: headers_builder(),
            origins: None,
            rows: 0,
            malformed: Vec::new(),
        }
    }

    /// A builder for replayed records, each with its own topic, partition and offset.
    pub(crate) fn replayed(label: Arc<str>) -> Self {
        MetaBuilder {
            origins: Some((StringBuilder::new(), Vec::new(), Vec::new())),
            ..MetaBuilder::new(label, -1)
        }
    }

    /// Appends a replayed record's metadata (on a [`replayed`](Self::replayed) builder).
    pub(crate) fn push_origin(&mut self, origin: &KafkaOrigin) {
        self.keys.append_option(origin.key.as_deref());
        self.timestamps.push(origin.timestamp_ms);
        for header in &origin.headers {
            self.headers.keys().append_value(&header.name);
            self.headers.values().append_option(header.value.as_deref());
        }
        let _ = self.headers.append(true);
        if let Some((topics, partitions, offsets)) = &mut self.origins {
            topics.append_value(&origin.topic);
            partitions.push(origin.partition);
            offsets.push(origin.offset);
        }
        self.rows += 1;
    }

    pub(crate) fn push<M: Message>(&mut self, message: &M)
    where
        M::Headers: NativeHeaders,
    {
        self.keys.append_option(message.key());
        self.timestamps.push(message.timestamp().to_millis());
        if let Some(headers) = message.headers() {
            let all = raw_headers(headers);
            for (i, header) in all.iter().enumerate() {
                if let Some(why) = header_problem(i, all.len(), header.name) {
                    // The first problem is reason enough.
                    if self
                        .malformed
                        .last()
                        .is_none_or(|(row, _)| *row != self.rows)
                    {
                        self.malformed.push((self.rows, why));
                    }
                }
                self.headers
                    .keys()
                    .append_value(String::from_utf8_lossy(header.name));
                self.headers.values().append_option(header.value);
            }
        }
        // Appending a map entry cannot fail: keys are never null here.
        let _ = self.headers.append(true);
        self.rows += 1;
    }

    pub(crate) fn finish(&mut self) -> KafkaMeta {
        KafkaMeta {
            topic: self.topic.clone(),
            partition: self.partition,
            keys: self.keys.finish(),
            timestamps: TimestampMillisecondArray::from(std::mem::take(&mut self.timestamps))
                .with_timezone("UTC"),
            headers: self.headers.finish(),
            origins: self.origins.as_mut().map(|(t, p, o)| Origins {
                topics: t.finish(),
                partitions: Int32Array::from(std::mem::take(p)),
                offsets: Int64Array::from(std::mem::take(o)),
            }),
            malformed: {
                self.rows = 0;
                std::mem::take(&mut self.malformed)
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rdkafka::message::{Header, OwnedHeaders, OwnedMessage, Timestamp};

    #[test]
    fn metadata_columns_follow_the_surviving_rows() {
        let mut builder = MetaBuilder::new(Arc::from("orders"), 3);
        for i in 0..3i64 {
            let headers = OwnedHeaders::new().insert(Header {
                key: "trace",
                value: Some(&format!("t{i}")),
            });
            let message = OwnedMessage::new(
                Some(b"{}".to_vec()),
                (i != 1).then(|| format!("k{i}").into_bytes()),
                "orders".into(),
                Timestamp::CreateTime(1_700_000_000_000 + i),
                3,
                100 + i,
                Some(headers),
            );
            builder.push(&message);
        }
        let meta = builder.finish();
        assert_eq!(meta.key(1), None);
        assert_eq!(
            meta.headers(2),
            vec![("trace".into(), Some(b"t2".to_vec()))]
        );

        let schema = Arc::new(Schema::new(vec![Field::new("x", DataType::Int64, false)]));
        let batch =
            RecordBatch::try_new(schema, vec![Arc::new(Int64Array::from(vec![7, 9]))]).unwrap();
        let out = meta
            .append_columns(&batch, &[0, 2], &[100, 101, 102])
            .unwrap();
        assert_eq!(out.num_columns(), 1 + COLUMNS.len());
        let offsets = out
            .column_by_name("_offset")
            .unwrap()
            .as_any()
            .downcast_ref::<Int64Array>()
            .unwrap();
        assert_eq!(offsets.values().to_vec(), vec![100, 102]);
        let keys = out
            .column_by_name("_key")
            .unwrap()
            .as_any()
            .downcast_ref::<BinaryArray>()
            .unwrap();
        assert_eq!(keys.value(1), b"k2");
        let headers = out.schema().field_with_name("_headers").unwrap().clone();
        assert!(!headers.is_nullable());
    }
}

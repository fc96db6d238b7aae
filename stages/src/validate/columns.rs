//! Growable column buffers that can be rolled back to a row count.
//!
//! The decoder appends one record at a time; when a record turns out to be
//! invalid half-way through, every column is truncated back to the rows of
//! the records before it. Arrow's builders cannot shrink, so these plain
//! `Vec`-backed buffers stand in for them and are turned into Arrow arrays
//! without copying once the batch is complete.

use std::sync::Arc;

use arrow::array::{
    ArrayRef, BooleanArray, Date32Array, Float64Array, Int64Array, ListArray, StringArray,
    StructArray, TimestampMicrosecondArray,
};
use arrow::buffer::{BooleanBuffer, NullBuffer, OffsetBuffer, ScalarBuffer};
use arrow::datatypes::{DataType, Field, Fields};

/// One column under construction; its shape mirrors the Arrow type.
#[derive(Debug)]
pub(crate) enum Column {
    Boolean(Values<bool>),
    Int64(Values<i64>),
    Float64(Values<f64>),
    Timestamp(Values<i64>),
    Date(Values<i32>),
    Utf8 {
        offsets: Vec<i32>,
        data: Vec<u8>,
        valid: Vec<bool>,
    },
    Struct {
        children: Vec<Column>,
        valid: Vec<bool>,
    },
    List {
        offsets: Vec<i32>,
        child: Box<Column>,
        valid: Vec<bool>,
    },
}

/// Fixed-width values with their validity.
#[derive(Debug, Default)]
pub(crate) struct Values<T> {
    values: Vec<T>,
    valid: Vec<bool>,
}

impl<T: Copy + Default> Values<T> {
    pub(crate) fn push(&mut self, v: T) {
        self.values.push(v);
        self.valid.push(true);
    }
    fn push_null(&mut self) {
        self.values.push(T::default());
        self.valid.push(false);
    }
    fn truncate(&mut self, rows: usize) {
        self.values.truncate(rows);
        self.valid.truncate(rows);
    }
    fn take(&mut self) -> (ScalarBuffer<T>, Option<NullBuffer>)
    where
        T: arrow::datatypes::ArrowNativeType,
    {
        let values = ScalarBuffer::from(std::mem::take(&mut self.values));
        (values, nulls(std::mem::take(&mut self.valid)))
    }
}

fn nulls(valid: Vec<bool>) -> Option<NullBuffer> {
    if valid.iter().all(|v| *v) {
        None
    } else {
        Some(NullBuffer::new(BooleanBuffer::from(valid)))
    }
}

impl Column {
    /// An empty column for `data_type` (one of the types the schema compiler emits).
    pub(crate) fn new(data_type: &DataType) -> Column {
        match data_type {
            DataType::Boolean => Column::Boolean(Values::default()),
            DataType::Int64 => Column::Int64(Values::default()),
            DataType::Float64 => Column::Float64(Values::default()),
            DataType::Timestamp(_, _) => Column::Timestamp(Values::default()),
            DataType::Date32 => Column::Date(Values::default()),
            DataType::Struct(fields) => Column::Struct {
                children: fields.iter().map(|f| Column::new(f.data_type())).collect(),
                valid: Vec::new(),
            },
            DataType::List(item) => Column::List {
                offsets: vec![0],
                child: Box::new(Column::new(item.data_type())),
                valid: Vec::new(),
            },
            _ => Column::Utf8 {
                offsets: vec![0],
                data: Vec::new(),
                valid: Vec::new(),
            },
        }
    }

    /// Rows appended so far.
    pub(crate) fn len(&self) -> usize {
        match self {
            Column::Boolean(v) => v.valid.len(),
            Column::Int64(v) | Column::Timestamp(v) => v.valid.len(),
            Column::Float64(v) => v.valid.len(),
            Column::Date(v) => v.valid.len(),
            Column::Utf8 { valid, .. }
            | Column::Struct { valid, .. }
            | Column::List { valid, .. } => valid.len(),
        }
    }

    pub(crate) fn push_str(&mut self, s: &str) {
        if let Column::Utf8 {
            offsets,
            data,
            valid,
        } = self
        {
            data.extend_from_slice(s.as_bytes());
            offsets.push(data.len() as i32);
            valid.push(true);
        }
    }

    /// Appends a null row (for a struct, a null in every child too).
    pub(crate) fn push_null(&mut self) {
        match self {
            Column::Boolean(v) => v.push_null(),
            Column::Int64(v) | Column::Timestamp(v) => v.push_null(),
            Column::Float64(v) => v.push_null(),
            Column::Date(v) => v.push_null(),
            Column::Utf8 {
                offsets,
                data,
                valid,
            } => {
                offsets.push(data.len() as i32);
                valid.push(false);
            }
            Column::Struct { children, valid } => {
                children.iter_mut().for_each(Column::push_null);
                valid.push(false);
            }
            Column::List { offsets, valid, .. } => {
                let last = offsets.last().copied().unwrap_or(0);
                offsets.push(last);
                valid.push(false);
            }
        }
    }

    /// Marks a struct row as present once all its children were appended.
    pub(crate) fn close_struct(&mut self) {
        if let Column::Struct { valid, .. } = self {
            valid.push(true);
        }
    }

    /// Closes a list row whose items were appended to the child.
    pub(crate) fn close_list(&mut self) {
        if let Column::List {
            offsets,
            child,
            valid,
        } = self
        {
            offsets.push(child.len() as i32);
            valid.push(true);
        }
    }

    /// Drops every row from `rows` on, in this column and its children.
    pub(crate) fn truncate(&mut self, rows: usize) {
        match self {
            Column::Boolean(v) => v.truncate(rows),
            Column::Int64(v) | Column::Timestamp(v) => v.truncate(rows),
            Column::Float64(v) => v.truncate(rows),
            Column::Date(v) => v.truncate(rows),
            Column::Utf8 {
                offsets,
                data,
                valid,
            } => {
                offsets.truncate(rows + 1);
                data.truncate(offsets[rows] as usize);
                valid.truncate(rows);
            }
            Column::Struct { children, valid } => {
                children.iter_mut().for_each(|c| c.truncate(rows));
                valid.truncate(rows);
            }
            Column::List {
                offsets,
                child,
                valid,
            } => {
                offsets.truncate(rows + 1);
                child.truncate(offsets[rows] as usize);
                valid.truncate(rows);
            }
        }
    }

    /// Moves the rows out as an Arrow array of `field`'s type, leaving the column empty.
    #[allow(unsafe_code)] // one unchecked string array; see the SAFETY note.
    pub(crate) fn finish(&mut self, data_type: &DataType) -> ArrayRef {
        match (self, data_type) {
            (Column::Boolean(v), _) => {
                let values = BooleanBuffer::from(std::mem::take(&mut v.values));
                Arc::new(BooleanArray::new(
                    values,
                    nulls(std::mem::take(&mut v.valid)),
                ))
            }
            (Column::Int64(v), _) => {
                let (values, nulls) = v.take();
                Arc::new(Int64Array::new(values, nulls))
            }
            (Column::Float64(v), _) => {
                let (values, nulls) = v.take();
                Arc::new(Float64Array::new(values, nulls))
            }
            (Column::Timestamp(v), DataType::Timestamp(_, tz)) => {
                let (values, nulls) = v.take();
                Arc::new(
                    TimestampMicrosecondArray::new(values, nulls).with_timezone_opt(tz.clone()),
                )
            }
            (Column::Date(v), _) => {
                let (values, nulls) = v.take();
                Arc::new(Date32Array::new(values, nulls))
            }
            (Column::Struct { children, valid }, DataType::Struct(fields)) => {
                let arrays = children
                    .iter_mut()
                    .zip(fields.iter())
                    .map(|(c, f)| c.finish(f.data_type()))
                    .collect();
                let nulls = nulls(std::mem::take(valid));
                Arc::new(StructArray::new(fields.clone(), arrays, nulls))
            }
            (
                Column::List {
                    offsets,
                    child,
                    valid,
                },
                DataType::List(item),
            ) => {
                let values = child.finish(item.data_type());
                let offsets =
                    OffsetBuffer::new(ScalarBuffer::from(std::mem::replace(offsets, vec![0])));
                let nulls = nulls(std::mem::take(valid));
                Arc::new(ListArray::new(item.clone(), offsets, values, nulls))
            }
            (
                Column::Utf8 {
                    offsets,
                    data,
                    valid,
                },
                _,
            ) => {
                let offsets =
                    OffsetBuffer::new(ScalarBuffer::from(std::mem::replace(offsets, vec![0])));
                let nulls = nulls(std::mem::take(valid));
                let values = std::mem::take(data).into();
                // SAFETY: bytes only enter through `push_str` (whole `&str`s) and leave through
                // `truncate` at an offset, i.e. at a string boundary, so `data` is valid UTF-8 and
                // every offset is in bounds and on a char boundary. The decoder already checked
                // each record's UTF-8; checking again here was a second pass over every string.
                Arc::new(unsafe { StringArray::new_unchecked(offsets, values, nulls) })
            }
            (column, other) => {
                // The schema compiler pairs columns with their types; a mismatch is a bug.
                unreachable!("column {column:?} built for type {other}")
            }
        }
    }
}

/// The top-level record: one column per property.
#[derive(Debug)]
pub(crate) struct RecordColumns {
    pub(crate) columns: Vec<Column>,
    pub(crate) rows: usize,
}

impl RecordColumns {
    pub(crate) fn new(fields: &Fields) -> Self {
        RecordColumns {
            columns: fields.iter().map(|f| Column::new(f.data_type())).collect(),
            rows: 0,
        }
    }

    /// Rolls every column back to the last complete record.
    pub(crate) fn rollback(&mut self) {
        let rows = self.rows;
        self.columns.iter_mut().for_each(|c| c.truncate(rows));
    }

    pub(crate) fn finish(&mut self, fields: &[Arc<Field>]) -> Vec<ArrayRef> {
        self.rows = 0;
        self.columns
            .iter_mut()
            .zip(fields)
            .map(|(c, f)| c.finish(f.data_type()))
            .collect()
    }
}

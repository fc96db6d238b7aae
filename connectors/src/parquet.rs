//! The Parquet sink: Hive-partitioned, rolling, atomically published files.
//!
//! One [`PartitionedParquetWriter`] serves one source partition. Rows are
//! split by the values of the `partition_by` columns into directories such
//! as `event_date=2026-11-24/`; each directory has at most one open file,
//! which rolls on max rows, max bytes or (for unbounded sources) max age.
//! A file is named after the stream and the position of its first record
//! (`orders.ndjson-000000000001.parquet`), so re-running the same input
//! overwrites instead of duplicating. Files are uploaded through
//! `object_store` multipart uploads, which publish the object under its
//! final name only when complete: readers never see a half-written file.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use arrow::array::{Array, ArrayRef, RecordBatch, UInt32Array};
use arrow::compute::{cast, take};
use arrow::datatypes::{DataType, Schema, SchemaRef};
use object_store::buffered::BufWriter;
use object_store::path::Path;
use parquet::arrow::AsyncArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::metadata::KeyValue;
use parquet::file::properties::WriterProperties;

use crate::store::Location;

/// How Parquet files are cut and encoded.
#[derive(Debug, Clone)]
pub struct ParquetOptions {
    /// Columns whose values name the Hive directories (left out of the files).
    pub partition_by: Vec<String>,
    /// Compression codec.
    pub compression: Codec,
    /// Roll a file after this many rows.
    pub max_rows: usize,
    /// Roll a file once it holds about this many bytes.
    pub max_bytes: usize,
    /// Roll a file this long after it was opened (unbounded sources only).
    pub max_age: Option<Duration>,
    /// Rows per row group.
    pub row_group_rows: usize,
    /// Files open at once per source partition; the least recently written is closed beyond it.
    pub max_open_files: usize,
    /// Row-group bytes every writer of this output holds together (clones share it).
    pub budget: RowGroupBudget,
}

/// Encoded row-group bytes that the open files of every writer sharing it
/// (one output, all the source partitions a process holds) keep in memory
/// together. A writer that finds the total over the limit after a write cuts
/// its own row groups, largest first, down to its share (the limit over the
/// number of writers), so a process holding many partitions stays near the
/// limit: at most the limit plus one write per writer.
#[derive(Debug, Clone)]
pub struct RowGroupBudget {
    limit: usize,
    counters: Arc<BudgetCounters>,
}

#[derive(Debug, Default)]
struct BudgetCounters {
    held: AtomicUsize,
    peak: AtomicUsize,
    writers: AtomicUsize,
}

impl RowGroupBudget {
    /// A budget of `limit` bytes (at least 1).
    pub fn new(limit: usize) -> Self {
        RowGroupBudget {
            limit: limit.max(1),
            counters: Arc::default(),
        }
    }

    /// The most bytes held at once so far.
    pub fn peak(&self) -> usize {
        self.counters.peak.load(Ordering::Relaxed)
    }

    /// Bytes held now.
    pub fn held(&self) -> usize {
        self.counters.held.load(Ordering::Relaxed)
    }

    /// Moves a writer's count from `before` to `now` bytes.
    fn update(&self, before: usize, now: usize) {
        let held = if now >= before {
            let added = now - before;
            self.counters.held.fetch_add(added, Ordering::Relaxed) + added
        } else {
            let freed = before - now;
            self.counters.held.fetch_sub(freed, Ordering::Relaxed) - freed
        };
        self.counters.peak.fetch_max(held, Ordering::Relaxed);
    }

    /// What one writer may keep while the total is over the limit, or `None` under it.
    fn share_when_over(&self) -> Option<usize> {
        (self.held() > self.limit)
            .then(|| self.limit / self.counters.writers.load(Ordering::Relaxed).max(1))
    }
}

impl Default for RowGroupBudget {
    /// 64 MiB.
    fn default() -> Self {
        RowGroupBudget::new(DEFAULT_ROW_GROUP_BUDGET)
    }
}

/// [`RowGroupBudget`]'s default limit.
pub const DEFAULT_ROW_GROUP_BUDGET: usize = 64 << 20;

/// Parquet compression.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Codec {
    /// Zstandard at a level (1–22).
    Zstd(i32),
    /// Snappy.
    Snappy,
    /// No compression.
    Uncompressed,
}

/// How closed files reach their final names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Placement {
    /// Published under the final name when closed (file sources, whose names are deterministic).
    Direct,
    /// Written under the hidden staging prefix; a commit publishes them (Kafka sources).
    /// The owner's epoch is part of the final name.
    Staged {
        /// The partition owner's epoch.
        epoch: u64,
    },
}

impl Placement {
    /// The final path of a file of `stream` under `dir` whose first record is at
    /// `first` (`<dir><stream>-<first>[-e<epoch>].<ext>`) and, when staged, the
    /// path it is written to first (the `n`-th file of this writer).
    pub(crate) fn paths(
        self,
        dir: &str,
        stream: &str,
        first: u64,
        ext: &str,
        n: u64,
    ) -> (Path, Option<Path>) {
        match self {
            Placement::Direct => (Path::from(format!("{dir}{stream}-{first:012}.{ext}")), None),
            Placement::Staged { epoch } => (
                Path::from(format!("{dir}{stream}-{first:012}-e{epoch}.{ext}")),
                Some(
                    crate::commit_log::staging_prefix(stream)
                        .join(format!("e{epoch}-{n:06}.{ext}.staged")),
                ),
            ),
        }
    }
}

/// A closed file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublishedFile {
    /// Final path relative to the output root.
    pub path: String,
    /// Where it was written, when staged (it reaches `path` at the next commit).
    pub staged: Option<String>,
    /// Rows in the file.
    pub rows: u64,
    /// Size in bytes.
    pub bytes: u64,
    /// Position of the first record.
    pub first_position: u64,
    /// Position of the last record.
    pub last_position: u64,
}

/// A Parquet output that failed.
#[derive(Debug, thiserror::Error)]
pub enum ParquetSinkError {
    /// A `partition_by` column is missing from the output schema.
    #[error("partition_by column {0:?} is not in the output schema")]
    MissingPartitionColumn(String),
    /// Encoding failed.
    #[error("parquet: {0}")]
    Parquet(#[from] parquet::errors::ParquetError),
    /// Reshaping a batch failed.
    #[error("arrow: {0}")]
    Arrow(#[from] arrow::error::ArrowError),
    /// A zstd level outside 1–22.
    #[error("invalid zstd level {0}")]
    Level(i32),
}

/// An open file's encoded-but-unwritten row group is cut at about this size.
const MAX_ROW_GROUP_BUFFER: usize = 8 << 20;

/// Hive's name for a null partition value.
const NULL_PARTITION: &str = "__HIVE_DEFAULT_PARTITION__";

struct OpenFile {
    dir: String,
    path: Path,
    staged: Option<Path>,
    writer: AsyncArrowWriter<BufWriter>,
    rows: usize,
    first_position: u64,
    last_position: u64,
    opened: Instant,
    last_write: u64,
}

/// Writes one source partition's rows for one output.
pub struct PartitionedParquetWriter {
    location: Location,
    options: ParquetOptions,
    props: WriterProperties,
    stream: String,
    /// Indices of the partition columns in the input batches.
    partition_columns: Vec<usize>,
    /// Indices of the data columns (written to files).
    data_columns: Vec<usize>,
    file_schema: SchemaRef,
    open: Vec<OpenFile>,
    published: Vec<PublishedFile>,
    writes: u64,
    placement: Placement,
    files_opened: u64,
    /// Row-group bytes this writer counts in `options.budget`.
    counted: usize,
}

impl std::fmt::Debug for PartitionedParquetWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PartitionedParquetWriter")
            .field("root", &self.location.display)
            .field("stream", &self.stream)
            .field("open", &self.open.len())
            .finish()
    }
}

/// The schema of the files: the batch schema minus the partition columns.
pub fn file_schema(
    schema: &Schema,
    partition_by: &[String],
) -> Result<SchemaRef, ParquetSinkError> {
    for column in partition_by {
        if schema.index_of(column).is_err() {
            return Err(ParquetSinkError::MissingPartitionColumn(column.clone()));
        }
    }
    let fields: Vec<_> = schema
        .fields()
        .iter()
        .filter(|f| !partition_by.contains(f.name()))
        .cloned()
        .collect();
    Ok(Arc::new(Schema::new(fields)))
}

/// How every Parquet file of an output is encoded (codec, row groups, `created_by`).
pub fn writer_properties(options: &ParquetOptions) -> Result<WriterProperties, ParquetSinkError> {
    let compression = match options.compression {
        Codec::Zstd(level) => Compression::ZSTD(
            ZstdLevel::try_new(level).map_err(|_| ParquetSinkError::Level(level))?,
        ),
        Codec::Snappy => Compression::SNAPPY,
        Codec::Uncompressed => Compression::UNCOMPRESSED,
    };
    Ok(WriterProperties::builder()
        .set_compression(compression)
        .set_max_row_group_row_count(Some(options.row_group_rows.max(1)))
        .set_created_by(format!("tributary {}", env!("CARGO_PKG_VERSION")))
        .build())
}

impl PartitionedParquetWriter {
    /// A writer for batches of `schema` from source stream `stream`, under `location`.
    pub fn new(
        location: Location,
        options: ParquetOptions,
        schema: &SchemaRef,
        stream: &str,
    ) -> Result<Self, ParquetSinkError> {
        let file_schema = file_schema(schema, &options.partition_by)?;
        let partition_columns = options
            .partition_by
            .iter()
            .map(|c| schema.index_of(c))
            .collect::<Result<Vec<_>, _>>()?;
        let data_columns = (0..schema.fields().len())
            .filter(|i| !partition_columns.contains(i))
            .collect();
        let props = writer_properties(&options)?;
        options
            .budget
            .counters
            .writers
            .fetch_add(1, Ordering::Relaxed);
        Ok(PartitionedParquetWriter {
            location,
            options,
            props,
            stream: stream.to_string(),
            partition_columns,
            data_columns,
            file_schema,
            open: Vec::new(),
            published: Vec::new(),
            writes: 0,
            placement: Placement::Direct,
            files_opened: 0,
            counted: 0,
        })
    }

    /// Sets how closed files reach their final names (default: [`Placement::Direct`]).
    pub fn with_placement(mut self, placement: Placement) -> Self {
        self.placement = placement;
        self
    }

    /// Rows grouped by Hive directory (`col=value/…`), in order of first appearance.
    fn groups(&self, batch: &RecordBatch) -> Result<Vec<(String, Vec<u32>)>, ParquetSinkError> {
        if self.partition_columns.is_empty() {
            return Ok(vec![(
                String::new(),
                (0..batch.num_rows() as u32).collect(),
            )]);
        }
        let rendered: Vec<ArrayRef> = self
            .partition_columns
            .iter()
            .map(|i| cast(batch.column(*i), &DataType::Utf8))
            .collect::<Result<_, _>>()?;
        let rendered: Vec<&arrow::array::StringArray> = rendered
            .iter()
            .map(|a| {
                a.as_any()
                    .downcast_ref()
                    .expect("cast to Utf8 yields a StringArray")
            })
            .collect();
        let mut index: HashMap<Vec<Option<&str>>, usize> = HashMap::new();
        let mut groups: Vec<(Vec<Option<&str>>, Vec<u32>)> = Vec::new();
        for row in 0..batch.num_rows() {
            let key: Vec<Option<&str>> = rendered
                .iter()
                .map(|values| values.is_valid(row).then(|| values.value(row)))
                .collect();
            let group = match index.get(&key) {
                Some(group) => *group,
                None => {
                    groups.push((key.clone(), Vec::new()));
                    index.insert(key, groups.len() - 1);
                    groups.len() - 1
                }
            };
            groups[group].1.push(row as u32);
        }
        let names = &self.options.partition_by;
        Ok(groups
            .into_iter()
            .map(|(key, rows)| {
                let mut dir = String::new();
                for (name, value) in names.iter().zip(key) {
                    dir.push_str(name);
                    dir.push('=');
                    dir.push_str(
                        &value.map_or_else(|| NULL_PARTITION.to_string(), escape_partition_value),
                    );
                    dir.push('/');
                }
                (dir, rows)
            })
            .collect())
    }

    /// Writes `batch`; `positions[i]` is the source position of row `i`.
    pub async fn write(
        &mut self,
        batch: &RecordBatch,
        positions: &[u64],
    ) -> Result<(), ParquetSinkError> {
        if batch.num_rows() == 0 {
            return Ok(());
        }
        for (dir, rows) in self.groups(batch)? {
            let mut rows = rows.as_slice();
            while !rows.is_empty() {
                let file = self.file_for(&dir, positions[rows[0] as usize]).await?;
                let room = self
                    .options
                    .max_rows
                    .saturating_sub(self.open[file].rows)
                    .max(1);
                let (now, later) = rows.split_at(room.min(rows.len()));
                let indices = UInt32Array::from(now.to_vec());
                let columns = self
                    .data_columns
                    .iter()
                    .map(|i| take(batch.column(*i), &indices, None))
                    .collect::<Result<Vec<_>, _>>()?;
                let part = RecordBatch::try_new(self.file_schema.clone(), columns)?;
                self.writes += 1;
                let open = &mut self.open[file];
                open.writer.write(&part).await?;
                if open.writer.in_progress_size() >= MAX_ROW_GROUP_BUFFER {
                    // Many open files (partitions × Hive directories) must not
                    // hold whole row groups each: cut the row group early.
                    open.writer.flush().await?;
                }
                if open.writer.bytes_written() > 0 {
                    // Some of the file is uploaded, not all.
                    crate::fault::crash_point("mid_upload");
                }
                self.keep_within_budget().await?;
                let open = &mut self.open[file];
                open.rows += now.len();
                open.last_position = positions[*now.last().expect("non-empty split") as usize];
                open.last_write = self.writes;
                if self.should_roll(file) {
                    self.close(file).await?;
                }
                rows = later;
            }
        }
        Ok(())
    }

    /// Counts this writer's row groups in the budget and, while the budget
    /// is over its limit, cuts them (largest first) down to this writer's share.
    async fn keep_within_budget(&mut self) -> Result<(), ParquetSinkError> {
        loop {
            let held = self.count_in_budget();
            let Some(share) = self.options.budget.share_when_over() else {
                return Ok(());
            };
            if held <= share {
                return Ok(());
            }
            match self
                .open
                .iter_mut()
                .filter(|f| f.writer.in_progress_size() > 0)
                .max_by_key(|f| f.writer.in_progress_size())
            {
                Some(largest) => largest.writer.flush().await?,
                None => return Ok(()),
            }
        }
    }

    /// Brings this writer's count in the budget up to date; returns it.
    fn count_in_budget(&mut self) -> usize {
        let held: usize = self.open.iter().map(|f| f.writer.in_progress_size()).sum();
        self.options.budget.update(self.counted, held);
        self.counted = held;
        held
    }

    fn should_roll(&self, file: usize) -> bool {
        let open = &self.open[file];
        let bytes = open.writer.bytes_written() + open.writer.in_progress_size();
        open.rows >= self.options.max_rows
            || bytes >= self.options.max_bytes
            || self
                .options
                .max_age
                .is_some_and(|age| open.opened.elapsed() >= age)
    }

    /// Index of the open file for `dir`, opening one named after `first_position` if needed.
    async fn file_for(
        &mut self,
        dir: &str,
        first_position: u64,
    ) -> Result<usize, ParquetSinkError> {
        if let Some(i) = self.open.iter().position(|f| f.dir == dir) {
            return Ok(i);
        }
        if self.open.len() >= self.options.max_open_files.max(1) {
            let oldest = (0..self.open.len())
                .min_by_key(|i| self.open[*i].last_write)
                .expect("at least one open file");
            self.close(oldest).await?;
        }
        self.files_opened += 1;
        let (path, staged) = self.placement.paths(
            dir,
            &self.stream,
            first_position,
            "parquet",
            self.files_opened,
        );
        let target = staged.clone().unwrap_or_else(|| path.clone());
        let object = self.location.upload(target);
        let writer =
            AsyncArrowWriter::try_new(object, self.file_schema.clone(), Some(self.props.clone()))?;
        self.open.push(OpenFile {
            dir: dir.to_string(),
            path,
            staged,
            writer,
            rows: 0,
            first_position,
            last_position: first_position,
            opened: Instant::now(),
            last_write: self.writes,
        });
        Ok(self.open.len() - 1)
    }

    async fn close(&mut self, file: usize) -> Result<(), ParquetSinkError> {
        let mut open = self.open.swap_remove(file);
        open.writer.append_key_value_metadata(KeyValue::new(
            "tributary.source".to_string(),
            format!(
                "{}:{}-{}",
                self.stream, open.first_position, open.last_position
            ),
        ));
        let finished = open.writer.finish().await;
        self.count_in_budget();
        finished?;
        let bytes = open.writer.bytes_written();
        tracing::debug!(path = %open.path, rows = open.rows, "published parquet file");
        self.published.push(PublishedFile {
            path: open.path.to_string(),
            staged: open.staged.map(|p| p.to_string()),
            rows: open.rows as u64,
            bytes: bytes as u64,
            first_position: open.first_position,
            last_position: open.last_position,
        });
        Ok(())
    }

    /// Closes files that are older than `max_age` (call on an idle tick for unbounded sources).
    pub async fn roll_expired(&mut self) -> Result<(), ParquetSinkError> {
        while let Some(i) = (0..self.open.len()).find(|i| self.should_roll(*i)) {
            self.close(i).await?;
        }
        Ok(())
    }

    /// Closes every open file and returns the files closed since the last call.
    pub async fn close_all(&mut self) -> Result<Vec<PublishedFile>, ParquetSinkError> {
        while !self.open.is_empty() {
            self.close(self.open.len() - 1).await?;
        }
        let mut closed = std::mem::take(&mut self.published);
        closed.sort_by(|a, b| a.path.cmp(&b.path));
        Ok(closed)
    }

    /// Closes every open file and returns the files closed since the last [`close_all`](Self::close_all).
    pub async fn finish(mut self) -> Result<Vec<PublishedFile>, ParquetSinkError> {
        self.close_all().await
    }
}

impl Drop for PartitionedParquetWriter {
    fn drop(&mut self) {
        self.options.budget.update(self.counted, 0);
        self.options
            .budget
            .counters
            .writers
            .fetch_sub(1, Ordering::Relaxed);
    }
}

/// Escapes characters that would break a Hive path segment, as Hive does.
fn escape_partition_value(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '/' | '\\' | '=' | '%' | ':' | '#' | '?' | '*' | '"' | '\'' | '[' | ']' | '^'
            | '\n' | '\r' | '\t' => {
                let mut buf = [0u8; 4];
                for b in c.encode_utf8(&mut buf).bytes() {
                    out.push_str(&format!("%{b:02X}"));
                }
            }
            c => out.push(c),
        }
    }
    if out.is_empty() {
        NULL_PARTITION.to_string()
    } else {
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Date32Array, Int64Array, StringArray};
    use arrow::datatypes::Field;
    use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

    fn options(max_rows: usize) -> ParquetOptions {
        ParquetOptions {
            partition_by: vec!["day".into()],
            compression: Codec::Zstd(3),
            max_rows,
            max_bytes: usize::MAX,
            max_age: None,
            row_group_rows: 1024,
            max_open_files: 4,
            budget: RowGroupBudget::default(),
        }
    }

    /// `rows` rows of barely compressible text, ids from `first`.
    fn text_batch(first: i64, rows: usize) -> RecordBatch {
        let schema = Arc::new(Schema::new(vec![
            Field::new("id", DataType::Int64, false),
            Field::new("s", DataType::Utf8, false),
        ]));
        let ids: Vec<i64> = (first..first + rows as i64).collect();
        let text: Vec<String> = ids
            .iter()
            .map(|i| format!("{:x}", (*i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15)).repeat(4))
            .collect();
        RecordBatch::try_new(
            schema,
            vec![
                Arc::new(Int64Array::from(ids)),
                Arc::new(StringArray::from(text)),
            ],
        )
        .unwrap()
    }

    #[tokio::test]
    async fn writers_sharing_a_budget_cut_their_row_groups_to_stay_within_it() {
        let dir = tempfile::tempdir().unwrap();
        let location = Location::local(dir.path()).unwrap();
        let (writers, writes, rows) = (8, 30, 500);
        let limit = 256 << 10;
        let options = |budget: RowGroupBudget| ParquetOptions {
            partition_by: Vec::new(),
            row_group_rows: 1 << 20,
            budget,
            ..options(usize::MAX)
        };
        // What one write adds to a row group, and what all of them would
        // hold with no budget.
        let mut alone = PartitionedParquetWriter::new(
            location.clone(),
            options(RowGroupBudget::new(usize::MAX)),
            &text_batch(0, rows).schema(),
            "probe",
        )
        .unwrap();
        alone.write(&text_batch(0, rows), &[0; 500]).await.unwrap();
        let one_write = alone.open[0].writer.in_progress_size();
        drop(alone);
        assert!(
            one_write * writes * writers > 4 * limit,
            "the input fits the budget: the test tests nothing"
        );

        let budget = RowGroupBudget::new(limit);
        let mut all: Vec<_> = (0..writers)
            .map(|w| {
                PartitionedParquetWriter::new(
                    location.clone(),
                    options(budget.clone()),
                    &text_batch(0, rows).schema(),
                    &format!("p{w}"),
                )
                .unwrap()
            })
            .collect();
        for n in 0..writes {
            for writer in &mut all {
                let first = (n * rows) as u64;
                let positions: Vec<u64> = (first..first + rows as u64).collect();
                writer
                    .write(&text_batch(first as i64, rows), &positions)
                    .await
                    .unwrap();
            }
        }
        assert!(
            budget.peak() <= limit + writers * 2 * one_write,
            "held {} bytes of row groups at once; the budget is {limit} (one write adds {one_write})",
            budget.peak()
        );
        assert!(budget.peak() > limit / 2, "{}", budget.peak());
        let mut written = 0;
        for writer in all {
            for file in writer.finish().await.unwrap() {
                let file = std::fs::File::open(dir.path().join(&file.path)).unwrap();
                let reader = ParquetRecordBatchReaderBuilder::try_new(file).unwrap();
                written += reader
                    .build()
                    .unwrap()
                    .map(|b| b.unwrap().num_rows())
                    .sum::<usize>();
            }
        }
        assert_eq!(written, writers * writes * rows);
        assert_eq!(budget.held(), 0, "finished writers hold nothing");
    }

    fn batch() -> RecordBatch {
        let schema = Arc::new(Schema::new(vec![
            Field::new("id", DataType::Int64, false),
            Field::new("day", DataType::Date32, true),
            Field::new("s", DataType::Utf8, true),
        ]));
        RecordBatch::try_new(
            schema,
            vec![
                Arc::new(Int64Array::from(vec![1, 2, 3, 4, 5])),
                Arc::new(Date32Array::from(vec![
                    Some(0),
                    Some(1),
                    Some(0),
                    None,
                    Some(0),
                ])),
                Arc::new(StringArray::from(vec!["a", "b", "c", "d", "e"])),
            ],
        )
        .unwrap()
    }

    #[tokio::test]
    async fn rows_land_in_hive_directories_and_files_roll_on_row_count() {
        let dir = tempfile::tempdir().unwrap();
        let location = Location::local(dir.path()).unwrap();
        let batch = batch();
        let mut writer =
            PartitionedParquetWriter::new(location, options(2), &batch.schema(), "in.ndjson")
                .unwrap();
        writer.write(&batch, &[10, 11, 12, 13, 14]).await.unwrap();
        let files = writer.finish().await.unwrap();
        let names: Vec<&str> = files.iter().map(|f| f.path.as_str()).collect();
        assert_eq!(
            names,
            vec![
                "day=1970-01-01/in.ndjson-000000000010.parquet",
                "day=1970-01-01/in.ndjson-000000000014.parquet",
                "day=1970-01-02/in.ndjson-000000000011.parquet",
                "day=__HIVE_DEFAULT_PARTITION__/in.ndjson-000000000013.parquet",
            ]
        );
        assert_eq!(files.iter().map(|f| f.rows).sum::<u64>(), 5);
        let file = std::fs::File::open(dir.path().join(names[0])).unwrap();
        let reader = ParquetRecordBatchReaderBuilder::try_new(file).unwrap();
        assert!(
            reader.schema().field_with_name("day").is_err(),
            "partition column is in the path only"
        );
        let rows: usize = reader.build().unwrap().map(|b| b.unwrap().num_rows()).sum();
        assert_eq!(rows, 2);
        let leftovers: Vec<_> = walk(dir.path())
            .into_iter()
            .filter(|p| !p.ends_with(".parquet"))
            .collect();
        assert!(
            leftovers.is_empty(),
            "no staging files remain: {leftovers:?}"
        );
    }

    fn walk(dir: &std::path::Path) -> Vec<String> {
        let mut out = Vec::new();
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                out.extend(walk(&path));
            } else {
                out.push(path.display().to_string());
            }
        }
        out
    }

    #[test]
    fn partition_values_are_escaped() {
        assert_eq!(escape_partition_value("a/b=c"), "a%2Fb%3Dc");
        assert_eq!(escape_partition_value(""), NULL_PARTITION);
    }
}

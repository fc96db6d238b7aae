//! The source contract and the newline-delimited JSON file source.
//!
//! A source yields **partitions**; each is read in order by one reader and
//! processed in order by one task, partitions in parallel. A record's
//! position (a line number for files, an offset for Kafka) is tracked so
//! that outputs can be named after the positions they cover and every
//! rejected record can be traced back to where it came from.
//!
//! The file source turns each matched file, or each fixed-size chunk of a
//! large file (cut at a line boundary), into one partition.

use std::fs::File;
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use arrow::array::{Array, BinaryArray};
use arrow::buffer::{Buffer, OffsetBuffer, ScalarBuffer};

/// A source that cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// The glob pattern is malformed.
    #[error("input pattern {pattern:?}: {message}")]
    Pattern {
        /// The pattern.
        pattern: String,
        /// What is wrong with it.
        message: String,
    },
    /// Nothing matched.
    #[error("input pattern {0:?} matches no file")]
    NoMatch(String),
    /// Reading failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The cause.
        source: std::io::Error,
    },
    /// A dead letter being replayed cannot be read (the message names the
    /// file and line, or the topic).
    #[error("{0}")]
    Replay(String),
    /// A line is too long to hold in memory.
    #[error(
        "{path}:{line}: line longer than {limit} bytes; split the input or raise max_line_bytes"
    )]
    LineTooLong {
        /// The file.
        path: String,
        /// The line number.
        line: u64,
        /// The limit.
        limit: usize,
    },
}

/// How a reader closes a batch.
#[derive(Debug, Clone, Copy)]
pub struct BatchLimits {
    /// At most this many records.
    pub max_records: usize,
    /// At most about this many payload bytes (a batch always holds at least one record).
    pub max_bytes: usize,
}

/// Where a partition's records come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// A file; positions are 1-based line numbers.
    File {
        /// The file's path as given.
        path: Arc<str>,
    },
    /// A Kafka partition; positions are offsets.
    Kafka {
        /// The topic.
        topic: Arc<str>,
        /// The partition.
        partition: i32,
    },
    /// Dead letters being replayed; positions are their places in the queue
    /// (lines of a file, offsets of a topic partition), and each batch says
    /// where its records were first read ([`RawBatch::first_sources`]).
    Replay {
        /// The queue partition, as a prefix to a position (`dlq/a.ndjson:`, `orders.dlq/0@`).
        queue: Arc<str>,
    },
}

impl RawBatch {
    /// Where record `row` came from: `path:line` for a file,
    /// `topic/partition@offset` for Kafka; a replayed record names where it
    /// was first read and its place in the dead-letter queue.
    pub fn describe(&self, origin: &Origin, row: usize) -> String {
        let position = self.positions.get(row).copied().unwrap_or_default();
        match origin {
            Origin::File { path } => format!("{path}:{position}"),
            Origin::Kafka { topic, partition } => format!("{topic}/{partition}@{position}"),
            Origin::Replay { queue } => {
                let first = self.first_sources.get(row).map_or("?", String::as_str);
                format!("{first} (replayed from {queue}{position})")
            }
        }
    }
}

/// Identity of a partition.
#[derive(Debug, Clone)]
pub struct PartitionInfo {
    /// Stable, filename-safe name of the stream the partition belongs to (e.g. the input file name).
    pub stream: String,
    /// Where records come from.
    pub origin: Origin,
    /// Human-readable label for logs and the summary (e.g. `orders.ndjson:1-250000`).
    pub label: String,
    /// Bytes to read from storage, when known (bounded sources).
    pub bytes: u64,
}

/// Raw records as read, before any stage.
#[derive(Debug, Clone)]
pub struct RawBatch {
    /// One payload per record.
    pub payloads: BinaryArray,
    /// Each record's position in its partition (line number for files).
    pub positions: Vec<u64>,
    /// Each record's byte offset in its file, for file sources.
    pub byte_offsets: Vec<u64>,
    /// Message metadata, for Kafka sources.
    pub meta: Option<crate::kafka::meta::KafkaMeta>,
    /// For replayed dead letters, where each record was first read
    /// (`in.ndjson:4`, `orders/3@70`); empty otherwise.
    pub first_sources: Vec<String>,
    /// What the batch holds against its source's memory budget.
    pub held: Held,
}

/// Bytes a batch holds against its source's memory budget (the Kafka
/// consumer's `max_buffered`), given back when the batch is dropped. A
/// clone holds nothing: only the batch as read is counted.
#[derive(Debug, Default)]
pub struct Held(Option<(std::sync::Arc<std::sync::atomic::AtomicUsize>, usize)>);

impl Held {
    /// `bytes` counted in `used` until this is dropped.
    pub(crate) fn new(used: std::sync::Arc<std::sync::atomic::AtomicUsize>, bytes: usize) -> Self {
        Held(Some((used, bytes)))
    }
}

impl Clone for Held {
    fn clone(&self) -> Self {
        Held(None)
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        if let Some((used, bytes)) = &self.0 {
            used.fetch_sub(*bytes, std::sync::atomic::Ordering::SeqCst);
        }
    }
}

impl RawBatch {
    /// Number of records.
    pub fn len(&self) -> usize {
        self.payloads.len()
    }

    /// Whether the batch has no records.
    pub fn is_empty(&self) -> bool {
        self.payloads.is_empty()
    }
}

/// Reads one partition in order.
pub trait PartitionReader: Send {
    /// The partition read.
    fn info(&self) -> &PartitionInfo;
    /// The next batch, or `None` once a bounded partition is exhausted.
    fn next_batch(&mut self, limits: BatchLimits) -> Result<Option<RawBatch>, SourceError>;
    /// Bytes read from storage so far (compressed bytes for compressed input).
    fn bytes_read(&self) -> u64 {
        0
    }
}

/// A source of partitions.
pub trait Source: Send + Sync {
    /// Whether the source ends by itself (files) or runs until stopped (streams).
    fn bounded(&self) -> bool;
    /// Every partition of a bounded source.
    fn partitions(&self) -> Result<Vec<Box<dyn PartitionReader>>, SourceError>;
}

/// Newline-delimited JSON files, one record per line; blank lines are skipped.
#[derive(Debug, Clone)]
pub struct FileSource {
    patterns: Vec<String>,
    chunk_bytes: u64,
    max_line_bytes: usize,
}

impl FileSource {
    /// Files matching any of `patterns` (globs), cut into partitions of about `chunk_bytes`.
    pub fn new(patterns: Vec<String>, chunk_bytes: u64, max_line_bytes: usize) -> Self {
        FileSource {
            patterns,
            chunk_bytes: chunk_bytes.max(1),
            max_line_bytes,
        }
    }

    /// The matched files, sorted, without duplicates.
    pub fn files(&self) -> Result<Vec<PathBuf>, SourceError> {
        let mut files = Vec::new();
        for pattern in &self.patterns {
            let matches = glob::glob(pattern).map_err(|e| SourceError::Pattern {
                pattern: pattern.clone(),
                message: e.to_string(),
            })?;
            let before = files.len();
            for entry in matches {
                let path = entry.map_err(|e| SourceError::Io {
                    path: e.path().display().to_string(),
                    source: std::io::Error::other(e.to_string()),
                })?;
                if path.is_file() {
                    files.push(path);
                }
            }
            if files.len() == before {
                return Err(SourceError::NoMatch(pattern.clone()));
            }
        }
        files.sort();
        files.dedup();
        Ok(files)
    }
}

fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> SourceError + '_ {
    move |source| SourceError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// `text` with every character but ASCII letters, digits, `.`, `_` and `-`
/// replaced by `_`: safe in a file or object name.
pub fn filename_safe(text: &str) -> String {
    text.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' || c == '_' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// A filename-safe stream name for each file: its file name, plus a hash of
/// the full path when two matched files share a name.
fn stream_names(files: &[PathBuf]) -> Vec<String> {
    let base: Vec<String> = files
        .iter()
        .map(|f| {
            filename_safe(
                &f.file_name()
                    .map_or_else(|| "input".into(), |n| n.to_string_lossy()),
            )
        })
        .collect();
    base.iter()
        .zip(files)
        .map(|(name, path)| {
            if base.iter().filter(|b| *b == name).count() > 1 {
                format!(
                    "{name}-{:08x}",
                    fnv1a(path.to_string_lossy().as_bytes()) as u32
                )
            } else {
                name.clone()
            }
        })
        .collect()
}

fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// A chunk of a file: bytes `[start, end)`, whose first line is `first_line`.
#[derive(Debug, Clone, Copy)]
struct Chunk {
    start: u64,
    end: u64,
    first_line: u64,
}

/// Cuts a file into chunks of about `chunk_bytes`, each ending at a newline,
/// counting lines on the way so every chunk knows its first line number.
fn plan_chunks(path: &Path, chunk_bytes: u64) -> Result<Vec<Chunk>, SourceError> {
    let len = std::fs::metadata(path).map_err(io_error(path))?.len();
    if len <= chunk_bytes {
        return Ok(vec![Chunk {
            start: 0,
            end: len,
            first_line: 1,
        }]);
    }
    let mut file = File::open(path).map_err(io_error(path))?;
    let mut chunks = Vec::new();
    let mut buf = vec![0u8; 1 << 20];
    let (mut start, mut first_line) = (0u64, 1u64);
    let (mut pos, mut line) = (0u64, 1u64);
    loop {
        let n = file.read(&mut buf).map_err(io_error(path))?;
        if n == 0 {
            break;
        }
        for i in memchr::memchr_iter(b'\n', &buf[..n]) {
            line += 1;
            let after = pos + i as u64 + 1;
            if after - start >= chunk_bytes {
                chunks.push(Chunk {
                    start,
                    end: after,
                    first_line,
                });
                start = after;
                first_line = line;
            }
        }
        pos += n as u64;
    }
    if start < len {
        chunks.push(Chunk {
            start,
            end: len,
            first_line,
        });
    }
    Ok(chunks)
}

impl Source for FileSource {
    fn bounded(&self) -> bool {
        true
    }

    fn partitions(&self) -> Result<Vec<Box<dyn PartitionReader>>, SourceError> {
        let files = self.files()?;
        let names = stream_names(&files);
        let mut partitions: Vec<Box<dyn PartitionReader>> = Vec::new();
        for (path, stream) in files.iter().zip(names) {
            let origin = Origin::File {
                path: Arc::from(path.display().to_string()),
            };
            if let Some(codec) = Compression::of(&path.to_string_lossy()) {
                // A compressed file cannot be cut: it is one partition.
                let file = File::open(path).map_err(io_error(path))?;
                let size = file.metadata().map_err(io_error(path))?.len();
                let progress = Arc::new(AtomicU64::new(0));
                let counted = Counted {
                    inner: file,
                    count: progress.clone(),
                };
                partitions.push(Box::new(LineReader {
                    info: PartitionInfo {
                        stream: stream.clone(),
                        origin: origin.clone(),
                        label: path.display().to_string(),
                        bytes: size,
                    },
                    path: path.display().to_string(),
                    reader: codec.decoder(counted).map_err(io_error(path))?,
                    next_line: 1,
                    next_offset: 0,
                    line: Vec::new(),
                    max_line_bytes: self.max_line_bytes,
                    progress,
                }));
                continue;
            }
            for chunk in plan_chunks(path, self.chunk_bytes)? {
                let mut file = File::open(path).map_err(io_error(path))?;
                file.seek(SeekFrom::Start(chunk.start))
                    .map_err(io_error(path))?;
                let progress = Arc::new(AtomicU64::new(0));
                let counted = Counted {
                    inner: file.take(chunk.end - chunk.start),
                    count: progress.clone(),
                };
                partitions.push(Box::new(LineReader {
                    info: PartitionInfo {
                        stream: stream.clone(),
                        origin: origin.clone(),
                        label: format!("{}@{}", path.display(), chunk.first_line),
                        bytes: chunk.end - chunk.start,
                    },
                    path: path.display().to_string(),
                    reader: Box::new(BufReader::with_capacity(1 << 20, counted)),
                    next_line: chunk.first_line,
                    next_offset: chunk.start,
                    line: Vec::new(),
                    max_line_bytes: self.max_line_bytes,
                    progress,
                }));
            }
        }
        Ok(partitions)
    }
}

/// How an input file is compressed, by its extension.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Compression {
    /// `.zst`, `.zstd`.
    Zstd,
    /// `.gz`.
    Gzip,
}

impl Compression {
    /// The compression of `name`, if any.
    pub(crate) fn of(name: &str) -> Option<Compression> {
        if name.ends_with(".zst") || name.ends_with(".zstd") {
            Some(Compression::Zstd)
        } else if name.ends_with(".gz") {
            Some(Compression::Gzip)
        } else {
            None
        }
    }

    /// A buffered reader of the decompressed bytes of `raw`.
    pub(crate) fn decoder(
        self,
        raw: impl Read + Send + 'static,
    ) -> std::io::Result<Box<dyn BufRead + Send>> {
        let raw = BufReader::with_capacity(1 << 20, raw);
        Ok(match self {
            Compression::Zstd => Box::new(BufReader::with_capacity(
                1 << 20,
                zstd::stream::read::Decoder::with_buffer(raw)?,
            )),
            Compression::Gzip => Box::new(BufReader::with_capacity(
                1 << 20,
                flate2::bufread::MultiGzDecoder::new(raw),
            )),
        })
    }
}

/// Counts the bytes read from storage (before decompression), for progress.
pub(crate) struct Counted<R> {
    pub(crate) inner: R,
    pub(crate) count: Arc<AtomicU64>,
}

impl<R: Read> Read for Counted<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.count.fetch_add(n as u64, Ordering::Relaxed);
        Ok(n)
    }
}

/// Reads the lines of one partition (a file chunk, a compressed file or an object).
pub(crate) struct LineReader {
    pub(crate) info: PartitionInfo,
    pub(crate) path: String,
    pub(crate) reader: Box<dyn BufRead + Send>,
    pub(crate) next_line: u64,
    pub(crate) next_offset: u64,
    pub(crate) line: Vec<u8>,
    pub(crate) max_line_bytes: usize,
    pub(crate) progress: Arc<AtomicU64>,
}

impl PartitionReader for LineReader {
    fn info(&self) -> &PartitionInfo {
        &self.info
    }

    fn bytes_read(&self) -> u64 {
        self.progress.load(Ordering::Relaxed)
    }

    fn next_batch(&mut self, limits: BatchLimits) -> Result<Option<RawBatch>, SourceError> {
        let mut data: Vec<u8> = Vec::with_capacity(limits.max_bytes.min(64 << 20));
        let mut offsets: Vec<i32> = vec![0];
        let mut positions = Vec::new();
        let mut byte_offsets = Vec::new();
        while positions.len() < limits.max_records
            && (positions.is_empty() || data.len() < limits.max_bytes)
        {
            self.line.clear();
            let read = (&mut self.reader)
                .take(self.max_line_bytes as u64 + 2)
                .read_until(b'\n', &mut self.line)
                .map_err(|source| SourceError::Io {
                    path: self.path.clone(),
                    source,
                })?;
            if read == 0 {
                break;
            }
            let (line, offset) = (self.next_line, self.next_offset);
            self.next_line += 1;
            self.next_offset += read as u64;
            let mut record = self.line.as_slice();
            if record.last() == Some(&b'\n') {
                record = &record[..record.len() - 1];
            } else if read > self.max_line_bytes {
                return Err(SourceError::LineTooLong {
                    path: self.path.clone(),
                    line,
                    limit: self.max_line_bytes,
                });
            }
            if record.last() == Some(&b'\r') {
                record = &record[..record.len() - 1];
            }
            if record.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            if data.len() + record.len() > i32::MAX as usize {
                return Err(SourceError::LineTooLong {
                    path: self.path.clone(),
                    line,
                    limit: i32::MAX as usize,
                });
            }
            data.extend_from_slice(record);
            offsets.push(data.len() as i32);
            positions.push(line);
            byte_offsets.push(offset);
        }
        if positions.is_empty() {
            return Ok(None);
        }
        let payloads = BinaryArray::new(
            OffsetBuffer::new(ScalarBuffer::from(offsets)),
            Buffer::from_vec(data),
            None,
        );
        Ok(Some(RawBatch {
            payloads,
            positions,
            byte_offsets,
            meta: None,
            first_sources: Vec::new(),
            held: Held::default(),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let path = dir.join(name);
        let mut f = File::create(&path).unwrap();
        f.write_all(text.as_bytes()).unwrap();
        path
    }

    fn read_all(source: &FileSource) -> Vec<(String, u64)> {
        let limits = BatchLimits {
            max_records: 2,
            max_bytes: 1 << 20,
        };
        let mut out = Vec::new();
        for mut p in source.partitions().unwrap() {
            while let Some(batch) = p.next_batch(limits).unwrap() {
                for (i, pos) in batch.positions.iter().enumerate() {
                    out.push((
                        String::from_utf8(batch.payloads.value(i).to_vec()).unwrap(),
                        *pos,
                    ));
                }
            }
        }
        out
    }

    #[test]
    fn chunks_cover_every_line_once_with_its_number() {
        let dir = tempfile::tempdir().unwrap();
        let text: String = (1..=100).map(|i| format!("{{\"n\":{i}}}\n")).collect();
        let path = write(dir.path(), "a.ndjson", &text);
        let source = FileSource::new(vec![path.display().to_string()], 64, 1 << 20);
        assert!(
            source.partitions().unwrap().len() > 5,
            "small chunks make many partitions"
        );
        let lines = read_all(&source);
        assert_eq!(lines.len(), 100);
        for (i, (text, line)) in lines.iter().enumerate() {
            assert_eq!(*line, i as u64 + 1);
            assert_eq!(text, &format!("{{\"n\":{}}}", i + 1));
        }
    }

    #[test]
    fn blank_lines_are_skipped_but_counted_and_crlf_is_trimmed() {
        let dir = tempfile::tempdir().unwrap();
        let path = write(dir.path(), "b.ndjson", "{\"a\":1}\r\n\n   \n{\"a\":2}");
        let source = FileSource::new(vec![path.display().to_string()], 1 << 20, 1 << 20);
        assert_eq!(
            read_all(&source),
            vec![("{\"a\":1}".to_string(), 1), ("{\"a\":2}".to_string(), 4)]
        );
    }

    #[test]
    fn a_pattern_without_matches_is_an_error() {
        let source = FileSource::new(vec!["/nonexistent/dir/*.ndjson".into()], 1 << 20, 1 << 20);
        assert!(matches!(source.partitions(), Err(SourceError::NoMatch(_))));
    }

    #[test]
    fn a_line_over_the_limit_is_refused_with_its_position() {
        let dir = tempfile::tempdir().unwrap();
        let path = write(
            dir.path(),
            "c.ndjson",
            &format!("{{}}\n{}\n", "x".repeat(100)),
        );
        let source = FileSource::new(vec![path.display().to_string()], 1 << 20, 50);
        let mut p = source.partitions().unwrap().pop().unwrap();
        let limits = BatchLimits {
            max_records: 10,
            max_bytes: 1 << 20,
        };
        let err = p.next_batch(limits).unwrap_err().to_string();
        assert!(err.contains("c.ndjson:2"), "{err}");
    }
}

//! Dead-letter files as a bounded source, for `tributary dlq replay`.
//!
//! Each file is one partition. Its records are the original bytes, and a
//! record's position is its line in the file, so what a replay writes is
//! named after `(stream, position)` like any file run: running the same
//! replay again rewrites the same files instead of adding new ones. The
//! stream is `replay-` and the first 12 hex digits of the file's SHA-256, so
//! the dead letters a replay writes never take the name of a file being
//! replayed.

use std::sync::Arc;

use arrow::array::BinaryArray;

use super::read::LetterFile;
use crate::source::{
    BatchLimits, Origin, PartitionInfo, PartitionReader, RawBatch, Source, SourceError,
};

/// Dead-letter files to run through a pipeline again.
#[derive(Debug, Clone)]
pub struct ReplaySource {
    files: Vec<LetterFile>,
}

impl ReplaySource {
    /// A source over `files`.
    pub fn new(files: Vec<LetterFile>) -> Self {
        ReplaySource { files }
    }
}

impl Source for ReplaySource {
    fn bounded(&self) -> bool {
        true
    }

    fn partitions(&self) -> Result<Vec<Box<dyn PartitionReader>>, SourceError> {
        self.files
            .iter()
            .map(|file| Ok(Box::new(ReplayReader::new(file)?) as Box<dyn PartitionReader>))
            .collect()
    }
}

/// Strips what an earlier replay added to a source description.
fn first_source(source: &str) -> &str {
    source
        .split_once(" (replayed from ")
        .map_or(source, |(first, _)| first)
}

struct ReplayReader {
    info: PartitionInfo,
    payloads: Vec<Vec<u8>>,
    next: usize,
}

impl ReplayReader {
    fn new(file: &LetterFile) -> Result<Self, SourceError> {
        let payloads = file
            .letters
            .iter()
            .enumerate()
            .map(|(i, letter)| {
                letter.original_bytes().map_err(|message| SourceError::Io {
                    path: format!("{}:{}", file.display, i + 1),
                    source: std::io::Error::other(message),
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let sources = file
            .letters
            .iter()
            .map(|l| first_source(&l.source).to_string())
            .collect();
        let bytes = payloads.iter().map(|p| p.len() as u64).sum();
        let hash = file.sha256.get(..12).unwrap_or(&file.sha256);
        Ok(ReplayReader {
            info: PartitionInfo {
                stream: format!("replay-{hash}"),
                origin: Origin::Replay {
                    file: Arc::from(file.display.as_str()),
                    sources: Arc::new(sources),
                },
                label: file.display.clone(),
                bytes,
            },
            payloads,
            next: 0,
        })
    }
}

impl PartitionReader for ReplayReader {
    fn info(&self) -> &PartitionInfo {
        &self.info
    }

    fn next_batch(&mut self, limits: BatchLimits) -> Result<Option<RawBatch>, SourceError> {
        if self.next >= self.payloads.len() {
            return Ok(None);
        }
        let start = self.next;
        let mut bytes = 0;
        while self.next < self.payloads.len()
            && (self.next == start
                || (self.next - start < limits.max_records && bytes < limits.max_bytes))
        {
            bytes += self.payloads[self.next].len();
            self.next += 1;
        }
        let payloads = BinaryArray::from_iter_values(&self.payloads[start..self.next]);
        Ok(Some(RawBatch {
            payloads,
            // Line numbers in the dead-letter file, 1-based like any file.
            positions: (start as u64 + 1..=self.next as u64).collect(),
            byte_offsets: Vec::new(),
            meta: None,
        }))
    }

    fn bytes_read(&self) -> u64 {
        self.payloads[..self.next]
            .iter()
            .map(|p| p.len() as u64)
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dead_letter::DeadLetter;

    fn letter(source: &str, original: &[u8]) -> DeadLetter {
        DeadLetter {
            time: "t".into(),
            pipeline: "p".into(),
            stage: "validate".into(),
            rule: "r".into(),
            reason: "x".into(),
            source: source.into(),
            position: 1,
            byte_offset: None,
            original: None,
            original_base64: None,
        }
        .with_original(original)
    }

    #[test]
    fn originals_come_back_in_batches_with_line_positions() {
        let file = LetterFile {
            path: "a.ndjson".into(),
            display: "dlq/a.ndjson".into(),
            letters: vec![
                letter("in.ndjson:4", b"{\"a\":1}"),
                letter("in.ndjson:9 (replayed from dlq/x.ndjson:2)", b"\xff"),
                letter("in.ndjson:12", b"{}"),
            ],
            sha256: "0123456789abcdef".into(),
        };
        let mut parts = ReplaySource::new(vec![file]).partitions().unwrap();
        let reader = &mut parts[0];
        assert_eq!(reader.info().stream, "replay-0123456789ab");
        let limits = BatchLimits {
            max_records: 2,
            max_bytes: 1 << 20,
        };
        let first = reader.next_batch(limits).unwrap().unwrap();
        assert_eq!(first.positions, vec![1, 2]);
        assert_eq!(first.payloads.value(1), b"\xff");
        let second = reader.next_batch(limits).unwrap().unwrap();
        assert_eq!(second.positions, vec![3]);
        assert!(reader.next_batch(limits).unwrap().is_none());
        assert_eq!(
            reader.info().origin.describe(2),
            "in.ndjson:9 (replayed from dlq/a.ndjson:2)"
        );
    }
}

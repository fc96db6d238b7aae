//! The NDJSON sink for dead-letter and review records.
//!
//! Each line is one rejected record: the original bytes (as a string, or
//! base64 when they are not UTF-8), which stage and rule rejected it and
//! why, where it came from, the pipeline and the time. Like Parquet files,
//! dead-letter files are named after the stream and the position of their
//! first record, written whole and published atomically. [`read`] reads
//! them back, and [`replay`] turns them into a source for `dlq replay`.

mod origin;
pub mod read;
pub mod replay;

pub use origin::{KafkaHeader, KafkaOrigin};

use object_store::buffered::BufWriter;
use object_store::path::Path;
use serde::{Deserialize, Serialize};
use tokio::io::AsyncWriteExt;

use crate::parquet::Placement;
use crate::store::Location;

/// One rejected record, as written to (and read back from) a dead-letter file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeadLetter {
    /// When it was rejected (RFC 3339, UTC).
    pub time: String,
    /// The pipeline's name.
    pub pipeline: String,
    /// The stage that rejected it (`validate`, `transform`, `enrich`…).
    pub stage: String,
    /// The rule or keyword that fired.
    pub rule: String,
    /// Why, naming the field and the value.
    pub reason: String,
    /// Where it came from: `file:line` or `topic/partition@offset`.
    pub source: String,
    /// Its position in the source partition (line or offset).
    pub position: u64,
    /// Its byte offset in the source file, for file sources.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub byte_offset: Option<u64>,
    /// The original bytes, when they are UTF-8.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub original: Option<String>,
    /// The original bytes in base64, when they are not UTF-8.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub original_base64: Option<String>,
    /// The Kafka message it was, for records consumed from Kafka.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub kafka: Option<KafkaOrigin>,
}

impl DeadLetter {
    /// The original bytes, exactly as they arrived.
    pub fn original_bytes(&self) -> Result<Vec<u8>, String> {
        match (&self.original, &self.original_base64) {
            (Some(text), _) => Ok(text.as_bytes().to_vec()),
            (None, Some(encoded)) => {
                use base64::Engine;
                base64::engine::general_purpose::STANDARD
                    .decode(encoded)
                    .map_err(|e| format!("original_base64 does not decode: {e}"))
            }
            (None, None) => Ok(Vec::new()),
        }
    }

    /// Stores `bytes` as text when it is UTF-8, as base64 otherwise.
    pub fn with_original(mut self, bytes: &[u8]) -> Self {
        match std::str::from_utf8(bytes) {
            Ok(text) => self.original = Some(text.to_string()),
            Err(_) => {
                use base64::Engine;
                self.original_base64 =
                    Some(base64::engine::general_purpose::STANDARD.encode(bytes));
            }
        }
        self
    }
}

/// A dead-letter write that failed.
#[derive(Debug, thiserror::Error)]
pub enum DeadLetterError {
    /// The store refused the file.
    #[error("writing {path}: {source}")]
    Store {
        /// The file.
        path: String,
        /// The cause.
        source: object_store::Error,
    },
    /// Streaming a file to the store failed.
    #[error("writing {path}: {source}")]
    Upload {
        /// The file.
        path: String,
        /// The cause.
        source: std::io::Error,
    },
    /// A record could not be encoded.
    #[error("encoding a dead letter: {0}")]
    Encode(#[from] serde_json::Error),
}

/// Writes one source partition's rejected records for one destination,
/// streaming each file to the store as it is written (see
/// [`Location::upload`]): memory holds an upload buffer, not the file.
#[derive(Debug)]
pub struct DeadLetterWriter {
    location: Location,
    stream: String,
    max_bytes: usize,
    /// Boxed: an upload is large, and most writers never open a file.
    open: Option<Box<OpenLetters>>,
    line: Vec<u8>,
    records: u64,
    published: Vec<StagedLetters>,
    placement: Placement,
    files: u64,
}

/// The file being written.
struct OpenLetters {
    upload: BufWriter,
    path: Path,
    staged: Option<Path>,
    bytes: usize,
    records: u64,
}

impl OpenLetters {
    /// Where the file is being written (its staged path, or its final one).
    fn target(&self) -> String {
        self.staged.as_ref().unwrap_or(&self.path).to_string()
    }
}

impl std::fmt::Debug for OpenLetters {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpenLetters")
            .field("path", &self.path)
            .field("bytes", &self.bytes)
            .field("records", &self.records)
            .finish()
    }
}

/// A dead-letter file written: at its final `path`, or staged for a commit to publish.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StagedLetters {
    /// Final path, relative to the destination root.
    pub path: String,
    /// Where it was written when staged.
    pub staged: Option<String>,
    /// Records in it.
    pub records: u64,
}

impl DeadLetterWriter {
    /// A writer under `location` for source stream `stream`; files roll at about `max_bytes`.
    pub fn new(location: Location, stream: &str, max_bytes: usize) -> Self {
        DeadLetterWriter {
            location,
            stream: stream.to_string(),
            max_bytes,
            open: None,
            line: Vec::new(),
            records: 0,
            published: Vec::new(),
            placement: Placement::Direct,
            files: 0,
        }
    }

    /// Sets how files reach their final names (default: [`Placement::Direct`]).
    pub fn with_placement(mut self, placement: Placement) -> Self {
        self.placement = placement;
        self
    }

    /// Appends one record.
    pub async fn append(&mut self, record: &DeadLetter) -> Result<(), DeadLetterError> {
        self.line.clear();
        serde_json::to_writer(&mut self.line, record)?;
        self.line.push(b'\n');
        let open = match &mut self.open {
            Some(open) => open,
            None => {
                self.files += 1;
                let (path, staged) =
                    self.placement
                        .paths("", &self.stream, record.position, "ndjson", self.files);
                let target = staged.clone().unwrap_or_else(|| path.clone());
                self.open.insert(Box::new(OpenLetters {
                    upload: self.location.upload(target),
                    path,
                    staged,
                    bytes: 0,
                    records: 0,
                }))
            }
        };
        open.upload
            .write_all(&self.line)
            .await
            .map_err(|source| DeadLetterError::Upload {
                path: open.target(),
                source,
            })?;
        open.bytes += self.line.len();
        open.records += 1;
        self.records += 1;
        if open.bytes >= self.max_bytes {
            self.close().await?;
        }
        Ok(())
    }

    /// Completes the open file's upload.
    async fn close(&mut self) -> Result<(), DeadLetterError> {
        let Some(mut open) = self.open.take() else {
            return Ok(());
        };
        open.upload
            .shutdown()
            .await
            .map_err(|source| DeadLetterError::Upload {
                path: open.target(),
                source,
            })?;
        self.published.push(StagedLetters {
            path: open.path.to_string(),
            staged: open.staged.map(|p| p.to_string()),
            records: open.records,
        });
        Ok(())
    }

    /// Completes the open file; returns the files written since the last call.
    pub async fn close_all(&mut self) -> Result<Vec<StagedLetters>, DeadLetterError> {
        self.close().await?;
        Ok(std::mem::take(&mut self.published))
    }

    /// Completes the open file; returns the files written since the last
    /// [`close_all`](Self::close_all) and the record count of the writer's life.
    pub async fn finish(mut self) -> Result<(Vec<String>, u64), DeadLetterError> {
        let files = self.close_all().await?;
        Ok((files.into_iter().map(|f| f.path).collect(), self.records))
    }
}

/// Stores a dead letter too large for its topic, whole, under `state` (the
/// commit logs' location: `_tributary/oversized/<stream>/<position>.json`),
/// before its cut-down copy is produced; returns where. The name is fixed
/// by the record's position, so a record rejected again after a crash is
/// stored again under the same name.
pub async fn keep_oversized(
    state: &Location,
    stream: &str,
    letter: &DeadLetter,
    position: u64,
) -> Result<String, DeadLetterError> {
    let path = Path::from(format!(
        "{}/oversized/{stream}/{position:020}.json",
        crate::commit_log::STATE_DIR,
    ));
    let body = serde_json::to_vec(letter)?;
    object_store::ObjectStoreExt::put(&*state.store, &path, body.into())
        .await
        .map_err(|source| DeadLetterError::Store {
            path: path.to_string(),
            source,
        })?;
    Ok(format!("{}/{path}", state.display))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn letter(position: u64) -> DeadLetter {
        DeadLetter {
            time: "2026-11-24T00:00:00Z".into(),
            pipeline: "p".into(),
            stage: "validate".into(),
            rule: "json".into(),
            reason: "bad".into(),
            source: format!("in.ndjson:{position}"),
            position,
            byte_offset: Some(0),
            original: None,
            original_base64: None,
            kafka: None,
        }
    }

    #[tokio::test]
    async fn records_round_trip_with_original_bytes_kept_exactly() {
        let dir = tempfile::tempdir().unwrap();
        let location = Location::local(dir.path()).unwrap();
        let mut writer = DeadLetterWriter::new(location, "in.ndjson", 1 << 20);
        writer
            .append(&letter(3).with_original(b"{\"a\":"))
            .await
            .unwrap();
        writer
            .append(&letter(7).with_original(b"\xff\xfe"))
            .await
            .unwrap();
        let (files, count) = writer.finish().await.unwrap();
        assert_eq!(files, vec!["in.ndjson-000000000003.ndjson"]);
        assert_eq!(count, 2);
        let text = std::fs::read_to_string(dir.path().join(&files[0])).unwrap();
        let back: Vec<DeadLetter> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(back[0].original.as_deref(), Some("{\"a\":"));
        assert_eq!(back[1].original_base64.as_deref(), Some("//4="));
    }
}

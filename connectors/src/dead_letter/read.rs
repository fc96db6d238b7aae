//! Reading dead-letter files back, for inspection and replay.
//!
//! A dead-letter location (the `dlq` or `review` path of a pipeline, local
//! or on S3) holds NDJSON files of [`DeadLetter`]s. Everything under
//! `_tributary/` (staging, manifests, replayed files) is not part of the
//! queue and is skipped.

use std::io::BufRead;

use futures::TryStreamExt;
use object_store::ObjectStoreExt;
use object_store::path::Path;

use super::DeadLetter;
use crate::object_source::ObjectReader;
use crate::store::Location;

/// Where files that were replayed are moved, under the dead-letter location.
pub const REPLAYED_PREFIX: &str = "_tributary/replayed";

/// A dead-letter file that cannot be read back.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// The store failed.
    #[error("{path}: {source}")]
    Store {
        /// The file or prefix.
        path: String,
        /// The cause.
        source: object_store::Error,
    },
    /// Reading a file failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The cause.
        source: std::io::Error,
    },
    /// A dead letter that the reader cannot take (see [`Check`]).
    #[error("{path}:{line}: {message}")]
    Refused {
        /// The file.
        path: String,
        /// The 1-based line number.
        line: usize,
        /// Why.
        message: String,
    },
    /// A line is not a dead letter.
    #[error("{path}:{line}: not a dead letter: {message}")]
    Parse {
        /// The file.
        path: String,
        /// The 1-based line number.
        line: usize,
        /// What is wrong.
        message: String,
    },
}

/// One dead-letter file of a queue (its letters are read with [`letters`]).
#[derive(Debug, Clone)]
pub struct LetterFile {
    /// Its key under the location.
    pub path: Path,
    /// Where it is, for messages (`<location>/<key>`).
    pub display: String,
    /// Its size in bytes.
    pub size: u64,
    /// SHA-256 of its bytes, hex.
    pub sha256: String,
}

/// What a reader requires of every letter before it reads any for real
/// (a replay through a Kafka pipeline: an origin in Kafka).
pub type Check<'a> = &'a dyn Fn(&DeadLetter) -> Result<(), String>;

/// Lists every dead-letter file under `location` (optionally only those
/// whose key starts with `prefix`), in key order, reading each once to
/// hash it and to check that every line is a dead letter that passes
/// `check`. Blocking: call from a blocking thread inside a Tokio runtime.
pub fn list_files(
    location: &Location,
    prefix: Option<&str>,
    check: Check<'_>,
) -> Result<Vec<LetterFile>, ReadError> {
    let handle = runtime(&location.display)?;
    let mut objects: Vec<_> = handle
        .block_on(location.store.list(None).try_collect::<Vec<_>>())
        .map_err(|source| ReadError::Store {
            path: location.display.clone(),
            source,
        })?;
    objects.retain(|o| {
        let key = o.location.as_ref();
        !key.starts_with("_tributary/")
            && key.ends_with(".ndjson")
            && prefix.is_none_or(|p| key.starts_with(p))
    });
    objects.sort_by(|a, b| a.location.cmp(&b.location));
    let mut files = Vec::with_capacity(objects.len());
    for object in objects {
        let mut file = LetterFile {
            display: format!("{}/{}", location.display, object.location),
            path: object.location,
            size: object.size,
            sha256: String::new(),
        };
        let mut letters = letters(location, &file)?;
        for letter in letters.by_ref() {
            let (line, letter) = letter?;
            check(&letter).map_err(|message| ReadError::Refused {
                path: file.display.clone(),
                line,
                message,
            })?;
        }
        file.sha256 = letters.sha256();
        files.push(file);
    }
    Ok(files)
}

fn runtime(path: &str) -> Result<tokio::runtime::Handle, ReadError> {
    tokio::runtime::Handle::try_current().map_err(|e| ReadError::Io {
        path: path.to_string(),
        source: std::io::Error::other(e),
    })
}

/// The letters of `file`, read from the store one line at a time. Blocking:
/// call from a blocking thread inside a Tokio runtime.
pub fn letters(
    location: &Location,
    file: &LetterFile,
) -> Result<LetterLines<Box<dyn BufRead + Send>>, ReadError> {
    let reader = ObjectReader::new(
        runtime(&file.display)?,
        location.store.clone(),
        file.path.clone(),
        file.size,
    );
    Ok(LetterLines::new(
        Box::new(std::io::BufReader::with_capacity(256 << 10, reader)),
        &file.display,
    ))
}

/// Dead letters parsed from NDJSON one line at a time, with their line
/// numbers; blank lines are skipped. The SHA-256 of the bytes read so far
/// is kept as they go.
#[derive(Debug)]
pub struct LetterLines<R> {
    reader: R,
    display: String,
    line: usize,
    buffer: Vec<u8>,
    hash: sha2::Sha256,
    failed: bool,
}

impl<R: BufRead> LetterLines<R> {
    /// Letters from `reader`; `display` names the file in errors.
    pub fn new(reader: R, display: &str) -> Self {
        LetterLines {
            reader,
            display: display.to_string(),
            line: 0,
            buffer: Vec::new(),
            hash: Default::default(),
            failed: false,
        }
    }

    /// SHA-256 (hex) of the bytes read so far: the file's, once read to the end.
    pub fn sha256(&self) -> String {
        use sha2::Digest;
        format!("{:x}", self.hash.clone().finalize())
    }
}

impl<R: BufRead> Iterator for LetterLines<R> {
    /// `(line number, letter)`.
    type Item = Result<(usize, DeadLetter), ReadError>;

    fn next(&mut self) -> Option<Self::Item> {
        use sha2::Digest;
        while !self.failed {
            self.buffer.clear();
            match self.reader.read_until(b'\n', &mut self.buffer) {
                Ok(0) => return None,
                Ok(_) => {}
                Err(source) => {
                    self.failed = true;
                    return Some(Err(ReadError::Io {
                        path: self.display.clone(),
                        source,
                    }));
                }
            }
            self.hash.update(&self.buffer);
            self.line += 1;
            if self.buffer.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            let parse_error = |message: String| ReadError::Parse {
                path: self.display.clone(),
                line: self.line,
                message,
            };
            let parsed = serde_json::from_slice::<DeadLetter>(&self.buffer)
                .map_err(|e| parse_error(e.to_string()))
                .and_then(|letter| {
                    letter.original_bytes().map_err(parse_error)?;
                    Ok((self.line, letter))
                });
            self.failed = parsed.is_err();
            return Some(parsed);
        }
        None
    }
}

/// Parses NDJSON dead letters; `display` names the file in errors.
pub fn parse(bytes: &[u8], display: &str) -> Result<Vec<DeadLetter>, ReadError> {
    LetterLines::new(bytes, display)
        .map(|letter| letter.map(|(_, letter)| letter))
        .collect()
}

/// Splits `files` into the queue and the files that a replay of another
/// file among them wrote (each in `files` order): the products of a replay
/// that stopped before moving its input out of the queue (a crash between
/// the run and the archive).
/// The input is still queued and replays again, writing them anew, so
/// they are not part of the queue: read with it, each record that failed
/// again would count twice and, once fixed, reach the output twice.
/// A replay's files are named after its input's content (stream
/// `replay-<first 12 hex digits of its SHA-256>`, see [`replay`](super::replay)).
pub fn unfinished_replays(files: Vec<LetterFile>) -> (Vec<LetterFile>, Vec<LetterFile>) {
    let queued: std::collections::HashSet<String> = files
        .iter()
        .map(|f| f.sha256.get(..12).unwrap_or(&f.sha256).to_string())
        .collect();
    files.into_iter().partition(|f| {
        !f.path
            .filename()
            .and_then(|name| name.strip_prefix("replay-"))
            .and_then(|rest| rest.split_once('-'))
            .is_some_and(|(hash, _)| queued.contains(hash))
    })
}

/// Moves a replayed file out of the queue, to `_tributary/replayed/<key>`
/// (kept, not deleted: nothing is lost).
pub async fn archive(location: &Location, file: &LetterFile) -> Result<(), ReadError> {
    let to = Path::from(format!("{REPLAYED_PREFIX}/{}", file.path));
    location
        .store
        .rename(&file.path, &to)
        .await
        .map_err(|source| ReadError::Store {
            path: file.display.clone(),
            source,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(key: &str, sha256: &str) -> LetterFile {
        LetterFile {
            path: Path::from(key),
            display: format!("dlq/{key}"),
            size: 0,
            sha256: sha256.to_string(),
        }
    }

    #[test]
    fn letters_written_by_a_replay_of_a_file_still_queued_are_not_part_of_the_queue() {
        let original = file("in.ndjson-000000000001.ndjson", &"a".repeat(64));
        // Written by an unfinished replay of `original`…
        let rewritten = file(
            &format!("replay-{}-000000000003.ndjson", "a".repeat(12)),
            &"b".repeat(64),
        );
        // …and by a finished replay of a file archived since.
        let kept = file(
            &format!("sub/replay-{}-000000000001.ndjson", "c".repeat(12)),
            &"d".repeat(64),
        );
        let files = vec![original, rewritten.clone(), kept];
        let (_, unfinished) = unfinished_replays(files);
        let unfinished: Vec<&str> = unfinished.iter().map(|f| f.display.as_str()).collect();
        assert_eq!(unfinished, vec![rewritten.display.as_str()]);
    }

    #[test]
    fn a_line_that_is_not_a_dead_letter_is_named_by_file_and_line() {
        let good = r#"{"time":"t","pipeline":"p","stage":"validate","rule":"r","reason":"x","source":"in:1","position":1,"original":"{}"}"#;
        let text = format!("{good}\n\n{{\"nope\":1}}\n");
        let error = parse(text.as_bytes(), "dlq/a.ndjson")
            .unwrap_err()
            .to_string();
        assert!(
            error.starts_with("dlq/a.ndjson:3: not a dead letter"),
            "{error}"
        );
        let letters = parse(format!("{good}\n").as_bytes(), "f").unwrap();
        assert_eq!(letters[0].original_bytes().unwrap(), b"{}");
    }
}

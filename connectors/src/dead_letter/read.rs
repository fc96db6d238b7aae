//! Reading dead-letter files back, for inspection and replay.
//!
//! A dead-letter location (the `dlq` or `review` path of a pipeline, local
//! or on S3) holds NDJSON files of [`DeadLetter`]s. Everything under
//! `_tributary/` (staging, manifests, replayed files) is not part of the
//! queue and is skipped.

use futures::TryStreamExt;
use object_store::ObjectStoreExt;
use object_store::path::Path;

use super::DeadLetter;
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

/// One dead-letter file and its records.
#[derive(Debug, Clone)]
pub struct LetterFile {
    /// Its key under the location.
    pub path: Path,
    /// Where it is, for messages (`<location>/<key>`).
    pub display: String,
    /// Its records, in file order (record `i` is on line `i + 1`).
    pub letters: Vec<DeadLetter>,
    /// SHA-256 of its bytes, hex.
    pub sha256: String,
}

/// Reads every dead-letter file under `location` (optionally only those
/// whose key starts with `prefix`), in key order.
pub async fn read_files(
    location: &Location,
    prefix: Option<&str>,
) -> Result<Vec<LetterFile>, ReadError> {
    let store_error = |path: &str| {
        let path = path.to_string();
        move |source| ReadError::Store { path, source }
    };
    let mut objects: Vec<_> = location
        .store
        .list(None)
        .try_collect()
        .await
        .map_err(store_error(&location.display))?;
    objects.retain(|o| {
        let key = o.location.as_ref();
        !key.starts_with("_tributary/")
            && key.ends_with(".ndjson")
            && prefix.is_none_or(|p| key.starts_with(p))
    });
    objects.sort_by(|a, b| a.location.cmp(&b.location));
    let mut files = Vec::with_capacity(objects.len());
    for object in objects {
        let display = format!("{}/{}", location.display, object.location);
        let bytes = location
            .store
            .get(&object.location)
            .await
            .map_err(store_error(&display))?
            .bytes()
            .await
            .map_err(store_error(&display))?;
        let letters = parse(&bytes, &display)?;
        use sha2::Digest;
        let sha256 = format!("{:x}", sha2::Sha256::digest(&bytes));
        files.push(LetterFile {
            path: object.location,
            display,
            letters,
            sha256,
        });
    }
    Ok(files)
}

/// Parses NDJSON dead letters; `display` names the file in errors.
pub fn parse(bytes: &[u8], display: &str) -> Result<Vec<DeadLetter>, ReadError> {
    let mut letters = Vec::new();
    for (i, line) in bytes.split(|b| *b == b'\n').enumerate() {
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let letter: DeadLetter = serde_json::from_slice(line).map_err(|e| ReadError::Parse {
            path: display.to_string(),
            line: i + 1,
            message: e.to_string(),
        })?;
        letter
            .original_bytes()
            .map_err(|message| ReadError::Parse {
                path: display.to_string(),
                line: i + 1,
                message,
            })?;
        letters.push(letter);
    }
    Ok(letters)
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
            letters: Vec::new(),
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

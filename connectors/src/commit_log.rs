//! The per-partition commit log behind exactly-once output from Kafka.
//!
//! Files for a Kafka partition are first written under a hidden staging
//! prefix (`_tributary/staging/<stream>/`), where readers never look. A
//! commit writes a **manifest** naming the staged files, their final paths
//! and the next offset to read, as `_tributary/commits/<stream>/<seq>.json`
//! with create-if-absent semantics, and then moves each staged file to its
//! final path. The manifest is the commit point: once it exists, the files
//! it names are published (now, or by whoever recovers the partition next);
//! without it, they never appear.
//!
//! A new owner of a partition reads the newest manifest, finishes its moves,
//! and claims the partition by writing the next sequence number with a
//! higher epoch. A zombie that still believes it owns the partition is
//! fenced off at its next manifest, whichever way that write goes:
//! - the sequence number is taken (by the new owner's claim or a later
//!   commit): the create-if-absent write fails, and the manifest found there
//!   is not the zombie's;
//! - the sequence number is free again because the new owner pruned it: the
//!   write lands, but the log already holds a higher sequence number, so the
//!   zombie's manifest is not the newest; it is deleted again and never acted on.
//!
//! Either way the zombie's staged files are never published. A write whose
//! reply was lost and which is retried finds its own manifest in place and
//! counts as written: a commit that landed is never mistaken for a fence.

use std::sync::Arc;

use bytes::Bytes;
use futures::TryStreamExt;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload};
use serde::{Deserialize, Serialize};

use crate::store::Location;

/// Where commit state and staged files live, under every store used.
pub const STATE_DIR: &str = "_tributary";

/// A file waiting to be published: written at `staged`, to appear at `path`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StagedFile {
    /// Which destination (output name, `dlq` or `review`) the file belongs to.
    pub destination: String,
    /// Where it was written, relative to the destination's root.
    pub staged: String,
    /// Its final path, relative to the destination's root.
    pub path: String,
    /// Records in it.
    pub records: u64,
}

/// One commit of one partition.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// Position in the log; each is written once.
    pub seq: u64,
    /// The owner's generation; it grows each time the partition changes hands.
    pub epoch: u64,
    /// Offset of the next record to read after this commit (`None` before any record).
    pub next_offset: Option<i64>,
    /// Files this commit publishes.
    pub files: Vec<StagedFile>,
    /// When it was written (RFC 3339, UTC).
    pub written_at: String,
}

/// A commit-log operation that failed.
#[derive(Debug, thiserror::Error)]
pub enum CommitLogError {
    /// Another owner wrote this sequence number first: this one is fenced off.
    #[error(
        "partition {stream}: commit {seq} was already written by another owner; this instance no longer owns the partition"
    )]
    Fenced {
        /// The stream.
        stream: String,
        /// The sequence number lost.
        seq: u64,
    },
    /// The store failed.
    #[error("{path}: {source}")]
    Store {
        /// The object.
        path: String,
        /// The cause.
        source: object_store::Error,
    },
    /// A local staging directory cannot be cleared.
    #[error(transparent)]
    Local(#[from] crate::store::StoreError),
    /// A manifest cannot be read.
    #[error("{path}: not a commit manifest: {message}")]
    Corrupt {
        /// The object.
        path: String,
        /// Why.
        message: String,
    },
}

fn store_error(path: &Path) -> impl FnOnce(object_store::Error) -> CommitLogError + '_ {
    move |source| CommitLogError::Store {
        path: path.to_string(),
        source,
    }
}

/// The staging prefix of `stream` in any destination store.
pub fn staging_prefix(stream: &str) -> Path {
    Path::from(format!("{STATE_DIR}/staging/{stream}"))
}

/// The commit log of one stream (one Kafka partition).
#[derive(Debug, Clone)]
pub struct CommitLog {
    store: Arc<dyn ObjectStore>,
    stream: String,
    prefix: Path,
}

impl CommitLog {
    /// The log of `stream`, kept under `location`.
    pub fn new(location: &Location, stream: &str) -> Self {
        CommitLog {
            store: location.store.clone(),
            stream: stream.to_string(),
            prefix: Path::from(format!("{STATE_DIR}/commits/{stream}")),
        }
    }

    fn path(&self, seq: u64) -> Path {
        self.prefix.clone().join(format!("{seq:020}.json"))
    }

    async fn sequence_numbers(&self) -> Result<Vec<u64>, CommitLogError> {
        let objects: Vec<_> = self
            .store
            .list(Some(&self.prefix))
            .try_collect()
            .await
            .map_err(store_error(&self.prefix))?;
        let mut seqs: Vec<u64> = objects
            .iter()
            .filter_map(|o| o.location.filename()?.strip_suffix(".json")?.parse().ok())
            .collect();
        seqs.sort_unstable();
        Ok(seqs)
    }

    async fn read(&self, seq: u64) -> Result<Option<Manifest>, CommitLogError> {
        let path = self.path(seq);
        let bytes = match self.store.get(&path).await {
            Ok(found) => found.bytes().await.map_err(store_error(&path))?,
            Err(object_store::Error::NotFound { .. }) => return Ok(None),
            Err(source) => return Err(store_error(&path)(source)),
        };
        serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| CommitLogError::Corrupt {
                path: path.to_string(),
                message: e.to_string(),
            })
    }

    /// The newest manifest, if the partition was ever committed.
    pub async fn latest(&self) -> Result<Option<Manifest>, CommitLogError> {
        // A manifest pruned between the listing and the read: list again.
        for _ in 0..3 {
            let Some(seq) = self.sequence_numbers().await?.pop() else {
                return Ok(None);
            };
            if let Some(manifest) = self.read(seq).await? {
                return Ok(Some(manifest));
            }
        }
        Err(CommitLogError::Corrupt {
            path: self.prefix.to_string(),
            message: "the newest manifest kept disappearing while being read".into(),
        })
    }

    /// Writes `manifest` as the newest commit of the stream; [`CommitLogError::Fenced`]
    /// if another owner holds its sequence number or has committed past it.
    ///
    /// A retried write whose first attempt landed (its reply lost) finds its
    /// own manifest in place: that counts as written.
    pub async fn append(&self, manifest: &Manifest) -> Result<(), CommitLogError> {
        let path = self.path(manifest.seq);
        let body = serde_json::to_vec_pretty(manifest).map_err(|e| CommitLogError::Corrupt {
            path: path.to_string(),
            message: e.to_string(),
        })?;
        let options = PutOptions {
            mode: PutMode::Create,
            ..Default::default()
        };
        let fenced = || CommitLogError::Fenced {
            stream: self.stream.clone(),
            seq: manifest.seq,
        };
        match self
            .store
            .put_opts(&path, PutPayload::from(Bytes::from(body)), options)
            .await
        {
            Ok(_) => {}
            Err(object_store::Error::AlreadyExists { .. }) => {
                if self.read(manifest.seq).await?.as_ref() != Some(manifest) {
                    return Err(fenced());
                }
                tracing::info!(stream = %self.stream, seq = manifest.seq, "manifest found in place: an earlier attempt wrote it");
            }
            Err(source) => {
                return Err(CommitLogError::Store {
                    path: path.to_string(),
                    source,
                });
            }
        }
        // The sequence number was free, but a newer owner may have pruned it
        // after committing past it: then this manifest is not the newest and
        // must never count. Take it back (best effort: it is older than the
        // newest, so no reader acts on it, and pruning removes it anyway).
        let newest = self.sequence_numbers().await?.pop().unwrap_or(manifest.seq);
        if newest > manifest.seq {
            tracing::warn!(stream = %self.stream, seq = manifest.seq, newest, "fenced: the commit log has moved past this owner's commit");
            match self.store.delete(&path).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
                Err(error) => {
                    tracing::warn!(stream = %self.stream, %error, "cannot delete a fenced manifest; pruning will")
                }
            }
            return Err(fenced());
        }
        Ok(())
    }

    /// Deletes manifests older than the newest `keep`.
    pub async fn prune(&self, keep: usize) -> Result<(), CommitLogError> {
        let seqs = self.sequence_numbers().await?;
        let old = seqs.len().saturating_sub(keep.max(1));
        for seq in &seqs[..old] {
            let path = self.path(*seq);
            match self.store.delete(&path).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
                Err(source) => return Err(store_error(&path)(source)),
            }
        }
        Ok(())
    }
}

/// Moves each staged file to its final path; files already moved are left
/// alone, so this can be repeated after a crash. `location_of` maps a
/// destination name to its store. Returns the files this call moved.
pub async fn publish<'a, 'f>(
    files: &'f [StagedFile],
    location_of: impl Fn(&str) -> Option<&'a Location>,
) -> Result<Vec<&'f StagedFile>, CommitLogError> {
    let mut moved = Vec::new();
    for file in files {
        let staged = Path::from(file.staged.as_str());
        let Some(location) = location_of(&file.destination) else {
            return Err(CommitLogError::Corrupt {
                path: file.staged.clone(),
                message: format!("unknown destination {:?}", file.destination),
            });
        };
        let target = Path::from(file.path.as_str());
        match location.store.rename(&staged, &target).await {
            Ok(()) => moved.push(file),
            Err(object_store::Error::NotFound { .. }) => {
                // Moved by an earlier attempt: the final file must be there.
                location
                    .store
                    .head(&target)
                    .await
                    .map_err(store_error(&target))?;
            }
            Err(source) => return Err(store_error(&staged)(source)),
        }
    }
    Ok(moved)
}

/// Deletes every staged file of `stream` under `location` (left by an owner
/// that never committed them), including the remains of uploads cut off mid-way.
pub async fn clear_staging(location: &Location, stream: &str) -> Result<usize, CommitLogError> {
    let prefix = staging_prefix(stream);
    let incomplete = location.remove_incomplete_uploads(&prefix)?;
    let objects: Vec<_> = location
        .store
        .list(Some(&prefix))
        .try_collect()
        .await
        .map_err(store_error(&prefix))?;
    for object in &objects {
        match location.store.delete(&object.location).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
            Err(source) => return Err(store_error(&object.location)(source)),
        }
    }
    Ok(objects.len() + incomplete)
}

/// Deletes one staged file (`staged`, a path in `location`) that a
/// fenced-off owner will never commit; one already gone is no error.
pub async fn discard_staged(location: &Location, staged: &str) -> Result<(), CommitLogError> {
    let path = Path::from(staged);
    match location.store.delete(&path).await {
        Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
        Err(source) => Err(store_error(&path)(source)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest(seq: u64, epoch: u64) -> Manifest {
        Manifest {
            seq,
            epoch,
            next_offset: Some(seq as i64 * 10),
            files: Vec::new(),
            written_at: "2026-11-24T00:00:00Z".into(),
        }
    }

    #[tokio::test]
    async fn a_sequence_number_is_written_once_and_the_loser_is_fenced() {
        let dir = tempfile::tempdir().unwrap();
        let location = Location::local(dir.path()).unwrap();
        let log = CommitLog::new(&location, "orders-0");
        assert_eq!(log.latest().await.unwrap(), None);
        log.append(&manifest(1, 1)).await.unwrap();
        log.append(&manifest(2, 1)).await.unwrap();
        // A new owner claims seq 3; the old one's commit 3 is refused.
        log.append(&manifest(3, 2)).await.unwrap();
        let zombie = log.append(&manifest(3, 1)).await.unwrap_err();
        assert!(
            matches!(zombie, CommitLogError::Fenced { seq: 3, .. }),
            "{zombie}"
        );
        assert_eq!(log.latest().await.unwrap(), Some(manifest(3, 2)));
        log.prune(2).await.unwrap();
        assert_eq!(log.sequence_numbers().await.unwrap(), vec![2, 3]);
    }

    #[tokio::test]
    async fn a_retried_write_whose_reply_was_lost_counts_as_written() {
        let dir = tempfile::tempdir().unwrap();
        let location = Location::local(dir.path()).unwrap();
        let log = CommitLog::new(&location, "orders-0");
        let mine = manifest(4, 2);
        // The first attempt landed; only its reply was lost, so the retry
        // finds the object already there.
        let body = serde_json::to_vec_pretty(&mine).unwrap();
        location
            .store
            .put(&log.path(4), PutPayload::from(body))
            .await
            .unwrap();
        log.append(&mine).await.unwrap();
        assert_eq!(log.latest().await.unwrap(), Some(mine));
        // Someone else's manifest under that number is still a fence.
        let other = log.append(&manifest(4, 1)).await.unwrap_err();
        assert!(
            matches!(other, CommitLogError::Fenced { seq: 4, .. }),
            "{other}"
        );
    }

    #[tokio::test]
    async fn a_zombie_is_fenced_even_after_its_sequence_number_was_pruned() {
        let dir = tempfile::tempdir().unwrap();
        let location = Location::local(dir.path()).unwrap();
        let log = CommitLog::new(&location, "orders-0");
        log.append(&manifest(1, 1)).await.unwrap();
        // The zombie (epoch 1) is frozen before writing commit 2. The new
        // owner claims 2 with epoch 2, commits up to 20 and prunes to 16.
        for seq in 2..=20 {
            log.append(&manifest(seq, 2)).await.unwrap();
        }
        log.prune(16).await.unwrap();
        assert_eq!(log.sequence_numbers().await.unwrap().first(), Some(&5));
        let zombie = log.append(&manifest(2, 1)).await.unwrap_err();
        assert!(
            matches!(zombie, CommitLogError::Fenced { seq: 2, .. }),
            "{zombie}"
        );
        // Its manifest is taken back: nothing but the new owner's commits remain.
        assert_eq!(
            log.sequence_numbers().await.unwrap(),
            (5..=20).collect::<Vec<_>>()
        );
        assert_eq!(log.latest().await.unwrap(), Some(manifest(20, 2)));
    }

    #[tokio::test]
    async fn publishing_moves_staged_files_and_can_be_repeated() {
        let dir = tempfile::tempdir().unwrap();
        let location = Location::local(dir.path()).unwrap();
        let staged = staging_prefix("orders-0").join("e1-000001.parquet.staged");
        location
            .store
            .put(&staged, PutPayload::from_static(b"data"))
            .await
            .unwrap();
        let files = vec![StagedFile {
            destination: "orders".into(),
            staged: staged.to_string(),
            path: "event_date=2026-11-24/orders-0-000000000000-e1.parquet".into(),
            records: 1,
        }];
        let moved = publish(&files, |_| Some(&location)).await.unwrap();
        assert_eq!(moved.len(), files.len());
        let again = publish(&files, |_| Some(&location)).await.unwrap();
        assert!(again.is_empty(), "moved twice: {again:?}");
        assert!(dir.path().join(&files[0].path).is_file());
        assert_eq!(clear_staging(&location, "orders-0").await.unwrap(), 0);
    }

    #[tokio::test]
    async fn clearing_staging_removes_uploads_cut_off_mid_way() {
        let dir = tempfile::tempdir().unwrap();
        let location = Location::local(dir.path()).unwrap();
        let prefix = staging_prefix("orders-0");
        let staged = prefix.clone().join("e1-000001.parquet.staged");
        location
            .store
            .put(&staged, PutPayload::from_static(b"whole"))
            .await
            .unwrap();
        // What a writer killed during a multipart upload leaves on local disk.
        let mut upload = location
            .store
            .put_multipart(&prefix.clone().join("e1-000002.parquet.staged"))
            .await
            .unwrap();
        upload
            .put_part(PutPayload::from_static(b"part"))
            .await
            .unwrap();
        std::mem::forget(upload);
        let on_disk = dir.path().join("_tributary/staging/orders-0");
        assert_eq!(std::fs::read_dir(&on_disk).unwrap().count(), 2);

        assert_eq!(clear_staging(&location, "orders-0").await.unwrap(), 2);
        assert_eq!(std::fs::read_dir(&on_disk).unwrap().count(), 0);
    }
}

//! Resolving a location from the pipeline file (a local path, `file://` or
//! `s3://bucket/prefix` URL) to an object store rooted there.

mod retrying;
mod s3;

use std::path::{Path as FsPath, PathBuf};
use std::sync::Arc;

use object_store::ObjectStore;
use object_store::local::LocalFileSystem;
use object_store::prefix::PrefixStore;

use crate::retry::{Retrier, RetryPolicy, RetryTargets};
pub use retrying::is_transient;
pub use s3::S3Settings;

/// A store location that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The scheme has no connector.
    #[error("{0}: unsupported location; use a local path, file:// or s3://bucket/prefix")]
    Unsupported(String),
    /// The local directory cannot be created.
    #[error("{path}: {source}")]
    Io {
        /// The directory.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The object store cannot be configured or refused.
    #[error(transparent)]
    Store(#[from] object_store::Error),
}

/// How remote stores are reached: S3 settings and the retry policy for every request.
#[derive(Debug, Clone, Default)]
pub struct Storage {
    /// S3 endpoint, region, addressing and credentials.
    pub s3: S3Settings,
    /// Retries of every request to a remote store.
    pub retry: RetryPolicy,
    /// Where the retriers of the stores opened with these settings are listed.
    pub targets: RetryTargets,
}

impl Storage {
    /// A retrier for `target` under these settings' policy, listed in their
    /// registry while it lives.
    pub fn retrier(&self, target: impl Into<Arc<str>>) -> Retrier {
        self.targets.retrier(target, self.retry)
    }
}

/// Bytes an upload buffers before it starts (S3's smallest part).
const UPLOAD_BUFFER: usize = 5 << 20;

/// The same on local disk, where parts have no minimum size.
const LOCAL_UPLOAD_BUFFER: usize = 256 << 10;

/// Parts one upload sends at once (`object_store`'s default is 8): two keep
/// it busy, and parts in flight are memory too.
const UPLOADS_IN_FLIGHT: usize = 2;

/// An object store rooted at a location.
#[derive(Debug, Clone)]
pub struct Location {
    /// The store.
    pub store: Arc<dyn ObjectStore>,
    /// Human-readable root (a directory or URL).
    pub display: String,
    /// The directory, when the store is the local file system.
    local_root: Option<PathBuf>,
}

impl Location {
    /// Opens `location`: a local path or `file://` URL (the directory is
    /// created), or `s3://bucket[/prefix]`.
    pub fn open(location: &str, storage: &Storage) -> Result<Location, StoreError> {
        if let Some(rest) = location.strip_prefix("s3://") {
            return Self::open_s3(location, rest, storage);
        }
        let path = match location.strip_prefix("file://") {
            Some(rest) => rest,
            None if location.contains("://") => {
                return Err(StoreError::Unsupported(location.into()));
            }
            None => location,
        };
        let dir = FsPath::new(path);
        std::fs::create_dir_all(dir).map_err(|source| StoreError::Io {
            path: dir.to_path_buf(),
            source,
        })?;
        let dir = dir.canonicalize().map_err(|source| StoreError::Io {
            path: dir.to_path_buf(),
            source,
        })?;
        let store = LocalFileSystem::new_with_prefix(&dir)?;
        Ok(Location {
            store: Arc::new(store),
            display: dir.display().to_string(),
            local_root: Some(dir),
        })
    }

    /// Opens a local directory with default settings.
    pub fn local(dir: &FsPath) -> Result<Location, StoreError> {
        Self::open(&dir.display().to_string(), &Storage::default())
    }

    fn open_s3(url: &str, rest: &str, storage: &Storage) -> Result<Location, StoreError> {
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        if bucket.is_empty() {
            return Err(StoreError::Unsupported(url.into()));
        }
        let display = url.trim_end_matches('/').to_string();
        let retrier = storage.retrier(display.clone());
        let store = retrying::RetryingStore::new(storage.s3.build(bucket)?, retrier);
        let prefix = prefix.trim_matches('/');
        let store: Arc<dyn ObjectStore> = if prefix.is_empty() {
            Arc::new(store)
        } else {
            Arc::new(PrefixStore::new(store, prefix))
        };
        Ok(Location {
            store,
            display,
            local_root: None,
        })
    }

    /// Whether the store is the local file system.
    pub fn is_local(&self) -> bool {
        self.local_root.is_some()
    }

    /// A streaming upload of `path`, which appears under its name only once
    /// shut down (a multipart upload). It holds at most its buffer (S3's
    /// smallest part, 5 MiB; 256 KiB on local disk) plus two parts in flight.
    pub fn upload(&self, path: object_store::path::Path) -> object_store::buffered::BufWriter {
        let buffer = if self.is_local() {
            LOCAL_UPLOAD_BUFFER
        } else {
            UPLOAD_BUFFER
        };
        object_store::buffered::BufWriter::with_capacity(self.store.clone(), path, buffer)
            .with_max_concurrency(UPLOADS_IN_FLIGHT)
    }

    /// Removes the temporary files of multipart uploads that never completed
    /// under `prefix` (a writer killed mid-upload leaves them). The local store
    /// keeps them as `name#N`, which listing hides; on S3 they are invisible
    /// parts that a bucket lifecycle rule (`AbortIncompleteMultipartUpload`)
    /// expires, so there is nothing to do here. Returns how many were removed.
    pub fn remove_incomplete_uploads(
        &self,
        prefix: &object_store::path::Path,
    ) -> Result<usize, StoreError> {
        let Some(root) = &self.local_root else {
            return Ok(0);
        };
        let dir = prefix
            .parts()
            .fold(root.clone(), |dir, part| dir.join(part.as_ref()));
        let entries = match std::fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
            Err(source) => return Err(StoreError::Io { path: dir, source }),
        };
        let io = |path: &FsPath| {
            let path = path.to_path_buf();
            move |source| StoreError::Io { path, source }
        };
        let mut removed = 0;
        for entry in entries {
            let path = entry.map_err(io(&dir))?.path();
            let incomplete = path
                .file_name()
                .and_then(|name| name.to_str())
                .and_then(|name| name.rsplit_once('#'))
                .is_some_and(|(_, n)| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()));
            if incomplete && path.is_file() {
                match std::fs::remove_file(&path) {
                    Ok(()) => removed += 1,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(source) => return Err(StoreError::Io { path, source }),
                }
            }
        }
        Ok(removed)
    }
}

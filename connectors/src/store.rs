//! Resolving a location from the pipeline file to an object store and a path in it.

use std::path::{Path as FsPath, PathBuf};
use std::sync::Arc;

use object_store::ObjectStore;
use object_store::local::LocalFileSystem;

/// A store location that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The scheme has no connector yet.
    #[error("{0}: only local paths (or file://) are supported as outputs so far")]
    Unsupported(String),
    /// The local directory cannot be created.
    #[error("{path}: {source}")]
    Io {
        /// The directory.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The object store refused.
    #[error(transparent)]
    Store(#[from] object_store::Error),
}

/// An object store rooted at an output location.
#[derive(Debug, Clone)]
pub struct Location {
    /// The store.
    pub store: Arc<dyn ObjectStore>,
    /// Human-readable root (a directory or URL).
    pub display: String,
    /// The local directory, when the store is a local filesystem.
    pub local_root: Option<PathBuf>,
}

impl Location {
    /// Opens `location` (a local path or `file://` URL), creating the directory.
    pub fn open(location: &str) -> Result<Location, StoreError> {
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
}

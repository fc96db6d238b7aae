//! NDJSON objects in S3 (or any object store) matched by a glob, one
//! partition per object, read as a stream on the partition's blocking thread.
//!
//! `s3://raw/orders/2026-11-*/*.ndjson.zst` lists under the literal prefix
//! `orders/` and keeps keys matching the pattern (`*` does not cross `/`).
//! `.zst`/`.gz` objects are decompressed on the fly. A read that fails
//! mid-object resumes from the last byte received, under the store's retry
//! policy.

use std::io::Read;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use bytes::Bytes;
use futures::stream::BoxStream;
use futures::{StreamExt, TryStreamExt};
use object_store::path::Path;
use object_store::{GetOptions, GetRange, ObjectStore};
use tokio::runtime::Handle;

use crate::source::{
    Compression, Counted, LineReader, Origin, PartitionInfo, PartitionReader, Source, SourceError,
};
use crate::store::{Location, Storage, is_transient};

/// Objects matching a glob under an object-store URL.
#[derive(Debug, Clone)]
pub struct ObjectSource {
    url: String,
    storage: Storage,
    max_line_bytes: usize,
}

impl ObjectSource {
    /// Objects matching `url` (`s3://bucket/key-glob`).
    pub fn new(url: String, storage: Storage, max_line_bytes: usize) -> Self {
        ObjectSource {
            url,
            storage,
            max_line_bytes,
        }
    }
}

/// `(bucket URL, literal key prefix, key pattern)` of `s3://bucket/glob`.
fn split_url(url: &str) -> Result<(String, String, String), SourceError> {
    let bad = |message: &str| SourceError::Pattern {
        pattern: url.to_string(),
        message: message.to_string(),
    };
    let rest = url
        .strip_prefix("s3://")
        .ok_or_else(|| bad("expected s3://bucket/key-pattern"))?;
    let (bucket, pattern) = rest
        .split_once('/')
        .ok_or_else(|| bad("expected s3://bucket/key-pattern"))?;
    let literal_end = pattern.find(['*', '?', '[', '{']).unwrap_or(pattern.len());
    let prefix = match pattern[..literal_end].rfind('/') {
        Some(slash) => pattern[..slash].to_string(),
        None => String::new(),
    };
    Ok((format!("s3://{bucket}"), prefix, pattern.to_string()))
}

fn store_error(path: &str) -> impl FnOnce(object_store::Error) -> SourceError + '_ {
    move |e| SourceError::Io {
        path: path.to_string(),
        source: std::io::Error::other(e),
    }
}

impl Source for ObjectSource {
    fn bounded(&self) -> bool {
        true
    }

    /// Lists the matching objects; call from a blocking context inside a Tokio runtime.
    fn partitions(&self) -> Result<Vec<Box<dyn PartitionReader>>, SourceError> {
        let (root, prefix, pattern) = split_url(&self.url)?;
        let matcher = glob::Pattern::new(&pattern).map_err(|e| SourceError::Pattern {
            pattern: self.url.clone(),
            message: e.to_string(),
        })?;
        let location = Location::open(&root, &self.storage).map_err(|e| SourceError::Pattern {
            pattern: self.url.clone(),
            message: e.to_string(),
        })?;
        let handle = Handle::try_current().map_err(|e| SourceError::Io {
            path: self.url.clone(),
            source: std::io::Error::other(e),
        })?;
        let list_prefix = (!prefix.is_empty()).then(|| Path::from(prefix.as_str()));
        let mut objects: Vec<_> = handle
            .block_on(
                location
                    .store
                    .list(list_prefix.as_ref())
                    .try_collect::<Vec<_>>(),
            )
            .map_err(store_error(&self.url))?;
        let options = glob::MatchOptions {
            require_literal_separator: true,
            ..Default::default()
        };
        objects.retain(|o| matcher.matches_with(o.location.as_ref(), options));
        objects.sort_by(|a, b| a.location.cmp(&b.location));
        if objects.is_empty() {
            return Err(SourceError::NoMatch(self.url.clone()));
        }
        let mut partitions: Vec<Box<dyn PartitionReader>> = Vec::with_capacity(objects.len());
        for object in objects {
            let key = object.location.to_string();
            let url = format!("{root}/{key}");
            let stream = crate::source::filename_safe(&key);
            let progress = Arc::new(AtomicU64::new(0));
            let body = Counted {
                inner: ObjectReader::new(
                    handle.clone(),
                    location.store.clone(),
                    object.location.clone(),
                    object.size,
                ),
                count: progress.clone(),
            };
            let reader = match Compression::of(&key) {
                Some(codec) => codec.decoder(body).map_err(|source| SourceError::Io {
                    path: url.clone(),
                    source,
                })?,
                None => Box::new(std::io::BufReader::with_capacity(1 << 20, body)),
            };
            partitions.push(Box::new(LineReader {
                info: PartitionInfo {
                    stream,
                    origin: Origin::File {
                        path: Arc::from(url.as_str()),
                    },
                    label: url.clone(),
                    bytes: object.size,
                },
                path: url,
                reader,
                next_line: 1,
                next_offset: 0,
                line: Vec::new(),
                max_line_bytes: self.max_line_bytes,
                progress,
            }));
        }
        Ok(partitions)
    }
}

/// A blocking reader of one object, fetched lazily as a byte stream.
pub(crate) struct ObjectReader {
    handle: Handle,
    store: Arc<dyn ObjectStore>,
    path: Path,
    size: u64,
    received: u64,
    chunk: Bytes,
    stream: Option<BoxStream<'static, object_store::Result<Bytes>>>,
}

impl std::fmt::Debug for ObjectReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ObjectReader")
            .field("path", &self.path)
            .field("received", &self.received)
            .field("size", &self.size)
            .finish()
    }
}

impl ObjectReader {
    /// Reads `path` (`size` bytes) from `store`, on `handle`'s runtime.
    pub(crate) fn new(handle: Handle, store: Arc<dyn ObjectStore>, path: Path, size: u64) -> Self {
        ObjectReader {
            handle,
            store,
            path,
            size,
            received: 0,
            chunk: Bytes::new(),
            stream: None,
        }
    }

    /// The next chunk of the body; a broken stream is reopened at the byte it stopped at.
    fn next_chunk(&mut self) -> std::io::Result<Option<Bytes>> {
        let mut resumes = 0;
        loop {
            if self.received >= self.size {
                return Ok(None);
            }
            if self.stream.is_none() {
                let options = GetOptions {
                    range: (self.received > 0).then_some(GetRange::Offset(self.received)),
                    ..Default::default()
                };
                let result = self
                    .handle
                    .block_on(self.store.get_opts(&self.path, options))
                    .map_err(std::io::Error::other)?;
                self.stream = Some(result.into_stream());
            }
            let Some(stream) = self.stream.as_mut() else {
                continue;
            };
            match self.handle.block_on(stream.next()) {
                Some(Ok(bytes)) => {
                    self.received += bytes.len() as u64;
                    return Ok(Some(bytes));
                }
                None => {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::UnexpectedEof,
                        format!(
                            "{}: object ended at byte {} of {}",
                            self.path, self.received, self.size
                        ),
                    ));
                }
                Some(Err(e)) if is_transient(&e) && resumes < 10 => {
                    resumes += 1;
                    tracing::warn!(object = %self.path, at = self.received, attempt = resumes, error = %e, "object read broke; resuming");
                    self.stream = None;
                }
                Some(Err(e)) => return Err(std::io::Error::other(e)),
            }
        }
    }
}

impl Read for ObjectReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.chunk.is_empty() {
            match self.next_chunk()? {
                Some(chunk) => self.chunk = chunk,
                None => return Ok(0),
            }
        }
        let n = buf.len().min(self.chunk.len());
        buf[..n].copy_from_slice(&self.chunk[..n]);
        self.chunk = self.chunk.slice(n..);
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_listing_prefix_is_the_literal_directories_before_the_first_wildcard() {
        let (root, prefix, pattern) = split_url("s3://raw/orders/2026-11-*/*.ndjson.zst").unwrap();
        assert_eq!(root, "s3://raw");
        assert_eq!(prefix, "orders");
        assert_eq!(pattern, "orders/2026-11-*/*.ndjson.zst");
        let (_, prefix, _) = split_url("s3://raw/*.ndjson").unwrap();
        assert_eq!(prefix, "");
        assert!(split_url("s3://raw").is_err());
    }
}

//! An object store whose every request is retried under a [`Retrier`].
//!
//! Multipart uploads go through [`MultipartStore`] so that each part is
//! retried under its own part number: a failed part is sent again, never
//! re-numbered, and the parts stay streamed (each is held only until S3
//! acknowledges it).

use std::fmt;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use futures::stream::BoxStream;
use futures::{FutureExt, StreamExt, TryStreamExt};
use object_store::multipart::{MultipartStore, PartId};
use object_store::path::Path;
use object_store::{
    CopyOptions, GetOptions, GetResult, ListResult, MultipartId, MultipartUpload, ObjectMeta,
    ObjectStore, ObjectStoreExt, PutMultipartOptions, PutOptions, PutPayload, PutResult, Result,
    UploadPart,
};

use crate::retry::Retrier;

/// Whether an object-store error may go away by itself (network, 5xx,
/// throttling) rather than being a fact about the request (missing object,
/// precondition, denied, malformed).
pub fn is_transient(error: &object_store::Error) -> bool {
    match error {
        object_store::Error::Generic { source, .. } => !is_client_error(source.as_ref()),
        _ => false,
    }
}

/// A 4xx answer other than 408 (timeout) and 429 (slow down) will not change on retry.
fn is_client_error(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    let Some(at) = text.find("status code: ") else {
        return false;
    };
    let code: String = text[at + 13..].chars().take(3).collect();
    code.starts_with('4') && code != "408" && code != "429"
}

/// `S` with retries.
#[derive(Debug)]
pub struct RetryingStore<S> {
    inner: Arc<S>,
    retrier: Retrier,
}

impl<S> RetryingStore<S> {
    /// Wraps `inner`.
    pub fn new(inner: S, retrier: Retrier) -> Self {
        RetryingStore {
            inner: Arc::new(inner),
            retrier,
        }
    }
}

impl<S> fmt::Display for RetryingStore<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.retrier.target)
    }
}

#[async_trait]
impl<S: ObjectStore + MultipartStore> ObjectStore for RetryingStore<S> {
    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        opts: PutOptions,
    ) -> Result<PutResult> {
        self.retrier
            .run(
                "put",
                || self.inner.put_opts(location, payload.clone(), opts.clone()),
                is_transient,
            )
            .await
    }

    async fn put_multipart_opts(
        &self,
        location: &Path,
        _opts: PutMultipartOptions,
    ) -> Result<Box<dyn MultipartUpload>> {
        let id = self
            .retrier
            .run(
                "create multipart upload",
                || self.inner.create_multipart(location),
                is_transient,
            )
            .await?;
        Ok(Box::new(RetryingUpload {
            store: self.inner.clone(),
            retrier: self.retrier.clone(),
            path: location.clone(),
            id,
            parts: Arc::default(),
            next_part: 0,
        }))
    }

    async fn get_opts(&self, location: &Path, options: GetOptions) -> Result<GetResult> {
        self.retrier
            .run(
                "get",
                || self.inner.get_opts(location, options.clone()),
                is_transient,
            )
            .await
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, Result<Path>>,
    ) -> BoxStream<'static, Result<Path>> {
        let (inner, retrier) = (self.inner.clone(), self.retrier.clone());
        locations
            .and_then(move |path| {
                let (inner, retrier) = (inner.clone(), retrier.clone());
                async move {
                    retrier
                        .run(
                            "delete",
                            || {
                                let one = futures::stream::iter([Ok(path.clone())]).boxed();
                                let mut results = inner.delete_stream(one);
                                let path = path.clone();
                                async move { results.next().await.unwrap_or(Ok(path)) }
                            },
                            is_transient,
                        )
                        .await
                }
            })
            .boxed()
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, Result<ObjectMeta>> {
        // A listing is collected whole so that a failed page retries the listing, not half of it.
        let (inner, retrier, prefix) = (self.inner.clone(), self.retrier.clone(), prefix.cloned());
        async move {
            retrier
                .run(
                    "list",
                    || inner.list(prefix.as_ref()).try_collect::<Vec<_>>(),
                    is_transient,
                )
                .await
        }
        .map(|listed| match listed {
            Ok(objects) => futures::stream::iter(objects.into_iter().map(Ok)).boxed(),
            Err(e) => futures::stream::once(async move { Err(e) }).boxed(),
        })
        .flatten_stream()
        .boxed()
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> Result<ListResult> {
        self.retrier
            .run(
                "list",
                || self.inner.list_with_delimiter(prefix),
                is_transient,
            )
            .await
    }

    async fn copy_opts(&self, from: &Path, to: &Path, options: CopyOptions) -> Result<()> {
        self.retrier
            .run(
                "copy",
                || self.inner.copy_opts(from, to, options.clone()),
                is_transient,
            )
            .await
    }
}

/// A multipart upload whose parts keep their numbers across retries.
#[derive(Debug)]
struct RetryingUpload<S> {
    store: Arc<S>,
    retrier: Retrier,
    path: Path,
    id: MultipartId,
    parts: Arc<Mutex<Vec<Option<PartId>>>>,
    next_part: usize,
}

#[async_trait]
impl<S: ObjectStore + MultipartStore> MultipartUpload for RetryingUpload<S> {
    fn put_part(&mut self, data: PutPayload) -> UploadPart {
        let index = self.next_part;
        self.next_part += 1;
        let (store, retrier, path, id, parts) = (
            self.store.clone(),
            self.retrier.clone(),
            self.path.clone(),
            self.id.clone(),
            self.parts.clone(),
        );
        async move {
            let part = retrier
                .run(
                    "upload part",
                    || store.put_part(&path, &id, index, data.clone()),
                    is_transient,
                )
                .await?;
            let mut parts = parts.lock().unwrap_or_else(|p| p.into_inner());
            if parts.len() <= index {
                parts.resize(index + 1, None);
            }
            parts[index] = Some(part);
            Ok(())
        }
        .boxed()
    }

    async fn complete(&mut self) -> Result<PutResult> {
        let parts: Vec<PartId> = {
            let parts = self.parts.lock().unwrap_or_else(|p| p.into_inner());
            if parts.len() != self.next_part || parts.iter().any(Option::is_none) {
                return Err(object_store::Error::Generic {
                    store: "S3",
                    source: format!(
                        "{}: completing a multipart upload with parts missing",
                        self.path
                    )
                    .into(),
                });
            }
            parts.iter().flatten().cloned().collect()
        };
        let (store, path, id) = (&self.store, &self.path, &self.id);
        let mut sent = false;
        self.retrier
            .run(
                "complete multipart upload",
                || {
                    let again = std::mem::replace(&mut sent, true);
                    let parts = parts.clone();
                    async move {
                        match store.complete_multipart(path, id, parts).await {
                            // An earlier attempt completed it but its answer was lost.
                            Err(object_store::Error::NotFound { .. }) if again => {
                                let meta = store.head(path).await?;
                                Ok(PutResult {
                                    e_tag: meta.e_tag,
                                    version: meta.version,
                                })
                            }
                            other => other,
                        }
                    }
                },
                is_transient,
            )
            .await
    }

    async fn abort(&mut self) -> Result<()> {
        self.retrier
            .run(
                "abort multipart upload",
                || self.store.abort_multipart(&self.path, &self.id),
                is_transient,
            )
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("{0}")]
    struct Message(String);

    fn generic(text: &str) -> object_store::Error {
        object_store::Error::Generic {
            store: "S3",
            source: Box::new(Message(text.into())),
        }
    }

    #[test]
    fn server_and_network_errors_are_transient_client_errors_are_not() {
        assert!(is_transient(&generic(
            "Error performing PUT http://x in 2ms - error sending request: connection refused"
        )));
        assert!(is_transient(&generic(
            "Server returned non-2xx status code: 503 Service Unavailable: slow down"
        )));
        assert!(is_transient(&generic(
            "Server returned non-2xx status code: 429 Too Many Requests"
        )));
        assert!(!is_transient(&generic(
            "Server returned non-2xx status code: 400 Bad Request: EntityTooSmall"
        )));
        assert!(!is_transient(&object_store::Error::NotFound {
            path: "a".into(),
            source: Box::new(Message("gone".into())),
        }));
    }
}

//! The proxy's listener: HTTP/1.1 served by hyper on a few worker threads,
//! each with its own single-threaded Tokio runtime. One acceptor hands
//! each new connection to the worker with the fewest open (workers racing
//! on a shared socket took them unevenly: one thread busy, the other idle,
//! and a third less throughput). A connection, its requests and their
//! upstream calls then stay on that thread (the upstream client and the
//! Redis connection are per thread, see [`crate::upstream::local_client`]
//! and [`redis`]), so a request is never handed from one thread to
//! another: the model of nginx's workers. On a work-stealing runtime the
//! same path woke another thread at almost every step.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::body::Body;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};

use crate::app::Gateway;

/// How long a client may take to send a request's headers.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);

/// How long a worker waits for its own Redis connection at start.
const REDIS_CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

thread_local! {
    static REDIS: std::cell::RefCell<Option<redis::aio::ConnectionManager>> =
        const { std::cell::RefCell::new(None) };
}

/// This worker's Redis connection (its reader runs on this thread, so a
/// rate limit check wakes no other thread), else `shared`.
pub(crate) fn redis(shared: &redis::aio::ConnectionManager) -> redis::aio::ConnectionManager {
    REDIS
        .with(|local| local.borrow().clone())
        .unwrap_or_else(|| shared.clone())
}

/// The worker threads serving the proxy listener.
#[derive(Debug)]
pub struct Workers {
    /// Where it listens.
    pub addr: SocketAddr,
    stop: watch::Sender<bool>,
    stopped: tokio::sync::oneshot::Receiver<()>,
}

impl Workers {
    /// Serves `listener` on `count` threads (at least one) until `stop` or
    /// `until` completes.
    pub fn spawn(
        listener: TcpListener,
        count: usize,
        gateway: Arc<Gateway>,
        until: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<Self> {
        let addr = listener.local_addr()?;
        let (stop, stopping) = watch::channel(false);
        let (done, stopped) = tokio::sync::oneshot::channel();
        let mut threads = Vec::new();
        let mut inboxes = Vec::new();
        for index in 0..count.max(1) {
            let (sender, inbox) = mpsc::unbounded_channel();
            let open = Arc::new(AtomicUsize::new(0));
            inboxes.push(Inbox {
                sender,
                open: open.clone(),
            });
            let gateway = gateway.clone();
            let stopping = stopping.clone();
            let thread = std::thread::Builder::new()
                .name(format!("gateway-worker-{index}"))
                .spawn(move || {
                    let runtime = tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()?;
                    runtime.block_on(serve(inbox, open, gateway, stopping))
                })?;
            threads.push(thread);
        }
        tokio::spawn(accept(listener, inboxes, stopping));
        let signal = stop.clone();
        tokio::spawn(async move {
            until.await;
            let _ = signal.send(true);
        });
        // Joined off the runtime: a thread ends when its connections have.
        std::thread::spawn(move || {
            for thread in threads {
                match thread.join() {
                    Ok(Ok(())) => {}
                    Ok(Err(error)) => tracing::error!(%error, "a proxy worker failed"),
                    Err(_) => tracing::error!("a proxy worker panicked"),
                }
            }
            let _ = done.send(());
        });
        Ok(Self {
            addr,
            stop,
            stopped,
        })
    }

    /// Stops accepting, lets requests in flight finish, and waits.
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        let _ = self.stopped.await;
    }

    /// Waits until the workers stop (after a signal, for a binary).
    pub async fn wait(self) {
        let _ = self.stopped.await;
    }
}

/// A worker as the acceptor sees it.
struct Inbox {
    sender: mpsc::UnboundedSender<(std::net::TcpStream, SocketAddr)>,
    open: Arc<AtomicUsize>,
}

/// Accepts until told to stop, giving each connection to the worker with
/// the fewest open. Dropping the inboxes at the end tells the workers.
async fn accept(listener: TcpListener, inboxes: Vec<Inbox>, mut stopping: watch::Receiver<bool>) {
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = stopping.wait_for(|stop| *stop) => break,
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(error) => {
                // Out of descriptors, or a connection reset before it was
                // taken: wait a moment rather than spin.
                tracing::warn!(%error, "accepting a connection failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        // Deregistered here, registered again on the worker's runtime.
        let Ok(stream) = stream.into_std() else {
            continue;
        };
        if let Some(inbox) = inboxes
            .iter()
            .min_by_key(|i| i.open.load(Ordering::Relaxed))
        {
            inbox.open.fetch_add(1, Ordering::Relaxed);
            if inbox.sender.send((stream, peer)).is_err() {
                inbox.open.fetch_sub(1, Ordering::Relaxed);
            }
        }
    }
}

/// One worker: serves the connections it is given until the acceptor
/// stops, then waits for them to finish the requests they are in (idle
/// ones close at once).
async fn serve(
    mut inbox: mpsc::UnboundedReceiver<(std::net::TcpStream, SocketAddr)>,
    open: Arc<AtomicUsize>,
    gateway: Arc<Gateway>,
    stopping: watch::Receiver<bool>,
) -> std::io::Result<()> {
    let own = redis::aio::ConnectionManager::new(gateway.redis_client.clone());
    match tokio::time::timeout(REDIS_CONNECT_TIMEOUT, own).await {
        Ok(Ok(connection)) => REDIS.with(|local| *local.borrow_mut() = Some(connection)),
        // It reconnects on its own once made; until then the shared one
        // (which does too) serves this worker.
        Ok(Err(error)) => {
            tracing::warn!(%error, "a proxy worker's Redis connection failed; sharing the main one")
        }
        Err(_) => {
            tracing::warn!("a proxy worker's Redis connection timed out; sharing the main one")
        }
    }
    let mut http = http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .keep_alive(true);
    // Every connection holds a sender: when all are gone, so are they.
    let (alive, mut all_closed) = mpsc::channel::<()>(1);
    while let Some((stream, peer)) = inbox.recv().await {
        let stream = match TcpStream::from_std(stream) {
            Ok(stream) => stream,
            Err(error) => {
                tracing::warn!(%error, "a proxy worker could not take a connection");
                open.fetch_sub(1, Ordering::Relaxed);
                continue;
            }
        };
        let gateway = gateway.clone();
        let service = service_fn(move |request: http::Request<hyper::body::Incoming>| {
            let gateway = gateway.clone();
            async move {
                Ok::<_, Infallible>(
                    crate::proxy::handle(gateway, peer, request.map(Body::new)).await,
                )
            }
        });
        let connection = http
            .serve_connection(TokioIo::new(stream), service)
            .with_upgrades();
        let mut stopping = stopping.clone();
        let alive = alive.clone();
        let open = open.clone();
        tokio::spawn(async move {
            tokio::pin!(connection);
            let finished = tokio::select! {
                result = connection.as_mut() => Some(result),
                _ = stopping.wait_for(|stop| *stop) => None,
            };
            let result = match finished {
                Some(result) => result,
                None => {
                    connection.as_mut().graceful_shutdown();
                    connection.await
                }
            };
            if let Err(error) = result {
                tracing::debug!(%error, %peer, "a client connection ended in error");
            }
            open.fetch_sub(1, Ordering::Relaxed);
            drop(alive);
        });
    }
    drop(alive);
    let _ = all_closed.recv().await;
    Ok(())
}

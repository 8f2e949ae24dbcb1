//! The HTTP front door: accepts TCP connections and speaks HTTP/1.1 and
//! HTTP/2 (prior knowledge / h2c) with hyper, handing each request to a
//! [`Handler`].
//!
//! It owns connection-level policy: a cap on open connections, timeouts for
//! slow clients (opening bytes and request headers, stalled writes, HTTP/2
//! keep-alive pings), `TCP_NODELAY`, and graceful shutdown (stop accepting,
//! let in-flight requests finish up to a deadline, then close what is left).
//!
//! **API boundary**: the ingress knows nothing about apps, routing or wasm;
//! the [`Handler`] decides everything about a request.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

mod io;

use io::GuardedIo;

/// Serves requests. Called once per request on the connection's task.
pub trait Handler: Send + Sync + 'static {
    /// The response body type.
    type Body: http_body::Body<Data = Bytes, Error = Self::BodyError> + Send + 'static;
    /// Errors the response body may yield (they abort the response).
    type BodyError: std::error::Error + Send + Sync + 'static;

    /// Answers one request that arrived on `conn`.
    fn handle(
        &self,
        request: Request<Incoming>,
        conn: Conn,
    ) -> impl Future<Output = Response<Self::Body>> + Send;
}

/// The connection a request arrived on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Conn {
    /// The client's address.
    pub peer: SocketAddr,
    /// The address the client connected to.
    pub local: SocketAddr,
}

/// Connection-level settings.
#[derive(Debug, Clone)]
pub struct IngressConfig {
    /// Longest time a client may take to send a request's headers (and,
    /// on a new connection, its first bytes).
    pub header_read_timeout: Duration,
    /// Longest time a write to a client may make no progress.
    pub write_timeout: Duration,
    /// Most connections open at once; further connections are closed at once.
    pub max_connections: usize,
    /// How long shutdown waits for in-flight requests before closing connections.
    pub shutdown_grace: Duration,
    /// Most concurrent streams per HTTP/2 connection.
    pub http2_max_streams: u32,
}

impl Default for IngressConfig {
    fn default() -> Self {
        Self {
            header_read_timeout: Duration::from_secs(10),
            write_timeout: Duration::from_secs(30),
            max_connections: 10_000,
            shutdown_grace: Duration::from_secs(30),
            http2_max_streams: 256,
        }
    }
}

/// A bound listener, ready to serve.
pub struct Ingress {
    listener: TcpListener,
    config: IngressConfig,
}

/// What happened during shutdown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShutdownReport {
    /// Connections still open when the grace period ended and were closed.
    pub forced: usize,
}

impl Ingress {
    /// Binds `addr`. Port 0 picks a free port; see [`Ingress::local_addr`].
    pub async fn bind(addr: SocketAddr, config: IngressConfig) -> std::io::Result<Self> {
        let socket = match addr {
            SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
            SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
        };
        // Rebinding right after a restart must work even with connections
        // of the previous process in TIME_WAIT.
        socket.set_reuseaddr(true)?;
        socket.bind(addr)?;
        let listener = socket.listen(1024)?;
        Ok(Self { listener, config })
    }

    /// The address actually bound.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves until `shutdown` resolves, then drains gracefully.
    pub async fn serve<H: Handler>(
        self,
        handler: Arc<H>,
        shutdown: impl Future<Output = ()>,
    ) -> ShutdownReport {
        let Ingress { listener, config } = self;
        let local = listener
            .local_addr()
            .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)));
        let mut builder = auto::Builder::new(TokioExecutor::new());
        builder
            .http1()
            .timer(TokioTimer::new())
            .header_read_timeout(config.header_read_timeout)
            .keep_alive(true);
        builder
            .http2()
            .timer(TokioTimer::new())
            .max_concurrent_streams(config.http2_max_streams)
            // Dead peers on idle HTTP/2 connections are found by pings.
            .keep_alive_interval(Duration::from_secs(20))
            .keep_alive_timeout(Duration::from_secs(20));
        let builder = Arc::new(builder);
        let connections = Arc::new(Semaphore::new(config.max_connections));
        let graceful = GracefulShutdown::new();
        let mut tasks = JoinSet::new();
        tokio::pin!(shutdown);

        loop {
            let (stream, peer) = tokio::select! {
                biased;
                () = &mut shutdown => break,
                // Reap finished connection tasks so the set stays small.
                Some(done) = tasks.join_next(), if !tasks.is_empty() => {
                    if let Err(e) = done
                        && e.is_panic()
                    {
                        tracing::error!("a connection task panicked: {e}");
                    }
                    continue;
                }
                accepted = listener.accept() => match accepted {
                    Ok(conn) => conn,
                    Err(e) => {
                        // Typically EMFILE: back off instead of spinning.
                        tracing::warn!("accept failed: {e}");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
            };
            let Ok(permit) = connections.clone().try_acquire_owned() else {
                tracing::warn!(%peer, "connection refused: {} connections open", config.max_connections);
                continue;
            };
            // Small writes (streamed bodies) must not wait for Nagle.
            let _ = stream.set_nodelay(true);
            let conn = Conn {
                peer,
                local: stream.local_addr().unwrap_or(local),
            };
            let handler = handler.clone();
            let service = service_fn(move |request| {
                let handler = handler.clone();
                async move { Ok::<_, Infallible>(handler.handle(request, conn).await) }
            });
            let builder = builder.clone();
            let watcher = graceful.watcher();
            let io = GuardedIo::new(stream, config.header_read_timeout, config.write_timeout);
            tasks.spawn(async move {
                let conn = builder.serve_connection(TokioIo::new(io), service);
                if let Err(e) = watcher.watch(conn).await {
                    tracing::debug!(%peer, "connection ended with error: {e}");
                }
                drop(permit);
            });
        }

        drop(listener);
        let open = graceful.count();
        if open > 0 {
            tracing::info!("shutting down: waiting for {open} open connection(s) to finish");
        }
        let report = match tokio::time::timeout(config.shutdown_grace, graceful.shutdown()).await {
            Ok(()) => ShutdownReport { forced: 0 },
            Err(_) => {
                let forced = config.max_connections - connections.available_permits();
                tracing::warn!(
                    "shutdown grace period of {:?} ended; closing {forced} connection(s)",
                    config.shutdown_grace
                );
                ShutdownReport { forced }
            }
        };
        // Close whatever is left (connections, and the requests on them).
        tasks.shutdown().await;
        report
    }
}

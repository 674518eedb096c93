//! The listeners: connections (HTTP/1.1 and h2c), request handling, graceful shutdown.

pub mod encoding;
mod feedback;
pub mod grpc;
mod handler;
mod oip;
mod pipeline;
mod rename;
pub mod response;
mod shadow;
mod triton;
mod watch;

pub use feedback::{ClaimError, FeedbackClaims, FeedbackLedger};
pub use handler::{bearer, carries_token, AppState};

use http::{Request, Response};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;

/// Connection settings of a listener.
#[derive(Debug, Clone)]
pub struct ListenerSettings {
    /// How long a client may take to send a request head (and to finish a TLS handshake).
    pub header_read_timeout: Duration,
    /// How long a kept-alive HTTP/1 connection may wait for its next request.
    pub keepalive_timeout: Duration,
    /// How long in-flight requests may run on after shutdown begins.
    pub shutdown_grace: Duration,
    /// Serve TLS with this config (see [`crate::tls::listener_config`]); plain HTTP when unset.
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// Connections held at once; beyond it the connection idle the longest is closed to make
    /// room, and with none idle the new one is closed as soon as it is accepted.
    pub max_connections: usize,
    /// Counts the connections closed for being beyond `max_connections`.
    pub refused: Option<metrics::Counter>,
    /// Counts the idle connections closed to make room.
    pub idle_closed: Option<metrics::Counter>,
}

impl ListenerSettings {
    /// The admin listener's settings: `tls`, a few connections, the server's timeouts.
    pub fn admin(settings: &crate::config::ServerSettings, tls: Option<Arc<rustls::ServerConfig>>) -> Self {
        ListenerSettings {
            header_read_timeout: settings.header_read_timeout,
            keepalive_timeout: settings.keepalive_timeout,
            shutdown_grace: settings.shutdown_grace,
            tls,
            max_connections: 1024,
            refused: None,
            idle_closed: None,
        }
    }

    /// An inference listener's settings (HTTP or gRPC, named by `listener`): the server's
    /// timeouts and connection limit, and `tls`.
    fn inference(state: &AppState, tls: Option<Arc<rustls::ServerConfig>>, listener: &'static str) -> Self {
        let settings = &state.settings;
        let label = metrics::Label::new("listener", listener);
        ListenerSettings {
            header_read_timeout: settings.header_read_timeout,
            keepalive_timeout: settings.keepalive_timeout,
            shutdown_grace: settings.shutdown_grace,
            tls,
            max_connections: settings.max_connections,
            refused: Some(state.telemetry.counter(crate::telemetry::names::CONNECTIONS_REFUSED, vec![label.clone()])),
            idle_closed: Some(state.telemetry.counter(crate::telemetry::names::CONNECTIONS_IDLE_CLOSED, vec![label])),
        }
    }
}

/// Serves the inference API on `listener` until `shutdown` completes.
pub async fn serve(
    listener: TcpListener,
    state: Arc<AppState>,
    tls: Option<Arc<rustls::ServerConfig>>,
    shutdown: impl Future<Output = ()>,
) {
    let settings = ListenerSettings::inference(&state, tls, "http");
    serve_with(listener, settings, shutdown, move |req, peer| handler::handle(state.clone(), req, peer)).await;
}

/// How long a new connection waits for the place of an idle one asked to close.
const ROOM_WAIT: Duration = Duration::from_secs(1);

/// A new connection's place under `max_connections`.
enum Admitted {
    /// A place was free.
    Now(tokio::sync::OwnedSemaphorePermit),
    /// An idle connection was asked to close: its place comes soon (or the new one is counted
    /// as refused).
    Soon(Arc<tokio::sync::Semaphore>, Option<metrics::Counter>),
}

/// Serves `handle` on `listener` until `shutdown` completes, then stops accepting and lets
/// in-flight requests finish for up to `settings.shutdown_grace`.
pub async fn serve_with<H, F, B>(
    listener: TcpListener,
    settings: ListenerSettings,
    shutdown: impl Future<Output = ()>,
    handle: H,
) where
    H: Fn(Request<Incoming>, SocketAddr) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Response<B>> + Send + 'static,
    B: hyper::body::Body<Data = bytes::Bytes> + Send + Unpin + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let mut builder = auto::Builder::new(TokioExecutor::new());
    // The head and keep-alive clocks are the connection's own (see `watch`), not hyper's.
    builder.http1().header_read_timeout(None).max_buf_size(64 * 1024);
    builder.http2().timer(TokioTimer::new()).max_header_list_size(64 * 1024);
    let builder = Arc::new(builder);
    let acceptor = settings.tls.clone().map(tokio_rustls::TlsAcceptor::from);
    let slots = Arc::new(tokio::sync::Semaphore::new(settings.max_connections));
    let connections = watch::Connections::default();
    let limits = watch::Limits { head: settings.header_read_timeout, keepalive: settings.keepalive_timeout };
    let graceful = GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, peer) = match accepted {
                    Ok(x) => x,
                    Err(e) => {
                        // Out of file descriptors and the like: back off instead of spinning.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let admitted = match slots.clone().try_acquire_owned() {
                    Ok(slot) => Admitted::Now(slot),
                    // Full: the connection idle the longest makes room (each new connection asks
                    // a different one, so those waiting stay as few as the idle ones).
                    Err(_) if connections.close_idlest() => Admitted::Soon(slots.clone(), settings.refused.clone()),
                    Err(_) => {
                        // None idle: closed at once, so that file descriptors and memory stay
                        // bounded whatever the clients do; the client sees the connection close
                        // and may retry (elsewhere).
                        if let Some(refused) = &settings.refused {
                            refused.increment(1);
                        }
                        drop(stream);
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                let handle = handle.clone();
                let phase = watch::Phase::new();
                connections.add(&phase);
                let answers = phase.clone();
                let svc = service_fn(move |req: Request<Incoming>| {
                    answers.taken(req.version());
                    let fut = handle(req, peer);
                    let phase = answers.clone();
                    async move { Ok::<_, Infallible>(fut.await.map(|body| watch::Answer::new(body, phase))) }
                });
                let (builder, watcher, acceptor) = (builder.clone(), graceful.watcher(), acceptor.clone());
                let idle_closed = settings.idle_closed.clone();
                tokio::spawn(async move {
                    let _slot = match admitted {
                        Admitted::Now(slot) => slot,
                        Admitted::Soon(slots, refused) => match tokio::time::timeout(ROOM_WAIT, slots.acquire_owned()).await {
                            Ok(Ok(slot)) => slot,
                            // The idle connection took a request after all: no room.
                            _ => {
                                if let Some(refused) = refused {
                                    refused.increment(1);
                                }
                                return;
                            }
                        },
                    };
                    let served = match acceptor {
                        None => {
                            let io = TokioIo::new(watch::Watched::new(stream, phase, limits, idle_closed));
                            watcher.watch(builder.serve_connection(io, svc).into_owned()).await
                        }
                        // The handshake runs on the connection's own task, bounded like a request head.
                        Some(acceptor) => match tokio::time::timeout(limits.head, acceptor.accept(stream)).await {
                            Ok(Ok(tls)) => {
                                let io = TokioIo::new(watch::Watched::new(tls, phase, limits, idle_closed));
                                watcher.watch(builder.serve_connection(io, svc).into_owned()).await
                            }
                            Ok(Err(e)) => return tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                            Err(_) => return tracing::debug!(%peer, "TLS handshake timed out"),
                        },
                    };
                    if let Err(e) = served {
                        tracing::debug!(%peer, error = %e, "connection ended with an error");
                    }
                });
            }
            () = &mut shutdown => break,
        }
    }
    drop(listener);
    let grace = settings.shutdown_grace;
    tracing::info!(?grace, "shutting down: no new connections, letting in-flight requests finish");
    tokio::select! {
        () = graceful.shutdown() => tracing::info!("all connections closed"),
        () = tokio::time::sleep(grace) => tracing::warn!(?grace, "grace period over; cutting remaining connections"),
    }
}

/// Completes on SIGTERM or SIGINT.
pub async fn shutdown_signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT received"),
        () = term => tracing::info!("SIGTERM received"),
    }
}

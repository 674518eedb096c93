//! Upstream HTTP/1.1 connections pooled per endpoint and driven on the request's own task.
//!
//! hyper-util's legacy client spawns a task per connection and hands each request to it over a
//! channel, so every forwarded request wakes a second task (often on another thread). Here the
//! request's task polls the connection itself: while it waits for the answer's head, and through
//! [`PooledBody`] while the answer's body streams. A connection whose answer ended cleanly goes
//! back to its endpoint's idle list (bounded, with an idle timeout); before reuse it is polled
//! once, so one the server closed meanwhile is dropped instead of failing the request.
//! Hand-written because hyper-util's pool is tied to its spawning client (no crate offers a pool
//! of `hyper::client::conn` connections without a task per connection).

use super::upstream::{Body, BodyError};
use bytes::Bytes;
use http::{Request, Response};
use hyper::body::{Body as HttpBody, Frame, Incoming, SizeHint};
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use std::collections::VecDeque;
use std::future::{poll_fn, Future};
use std::pin::{pin, Pin};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::net::TcpStream;

type Conn = http1::Connection<TokioIo<TcpStream>, Body>;

/// Why a pooled request failed: no connection could be made, or the exchange failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum PoolError {
    /// Connecting failed (refused, unreachable, or not within the connect timeout). The
    /// `io::Error` is the source, so callers walking the cause chain see its kind.
    #[error("{0}")]
    Connect(#[source] std::io::Error),
    /// The request or the answer's head failed on an open connection.
    #[error(transparent)]
    Request(hyper::Error),
}

/// One connection: its request sender and the future that drives it. Boxed once when made, so
/// handing it between the idle list, the request and its body moves a pointer, not the
/// connection's state (its moves were a visible share of the proxy's memmove).
struct Link {
    send: http1::SendRequest<Body>,
    conn: Conn,
}

/// A connection with nothing in flight.
struct Idle {
    link: Box<Link>,
    since: Instant,
}

/// The idle connections of one endpoint.
pub(crate) struct HostPool {
    /// `host:port` to connect to.
    addr: String,
    connect_timeout: Duration,
    idle_timeout: Duration,
    max_idle: usize,
    /// Oldest first: taken from the back, expired ones leave from the front.
    idle: Mutex<VecDeque<Idle>>,
}

impl std::fmt::Debug for HostPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HostPool").field("addr", &self.addr).field("idle", &self.idle_count()).finish()
    }
}

impl HostPool {
    /// A pool for `addr` (`host:port`) keeping at most `max_idle` idle connections, each for at
    /// most `idle_timeout`.
    pub fn new(addr: String, connect_timeout: Duration, idle_timeout: Duration, max_idle: usize) -> HostPool {
        HostPool { addr, connect_timeout, idle_timeout, max_idle, idle: Mutex::new(VecDeque::new()) }
    }

    /// Idle connections now kept.
    pub fn idle_count(&self) -> usize {
        self.idle.lock().map_or(0, |l| l.len())
    }

    /// Sends `req` (origin-form URI, `Host` set) on an idle connection, else a new one, and
    /// answers with the head; the body streams through [`PooledBody`], which returns the
    /// connection when it ends. A request refused by a reused connection before any byte of it
    /// was written is sent once more on a new connection.
    pub async fn send(self: &Arc<Self>, mut req: Request<Body>) -> Result<Response<Body>, PoolError> {
        let mut fresh_only = false;
        loop {
            let (mut link, reused) = match if fresh_only { None } else { self.ready_idle().await } {
                Some(link) => (link, true),
                None => (self.connect().await?, false),
            };
            let mut conn_done = false;
            let answer = {
                let Link { send, conn } = &mut *link;
                let mut answer = pin!(send.try_send_request(req));
                poll_fn(|cx| {
                    // Closed or failed: the dispatcher has answered the request with an error.
                    if !conn_done && Pin::new(&mut *conn).poll(cx).is_ready() {
                        conn_done = true;
                    }
                    answer.as_mut().poll(cx)
                })
                .await
            };
            match answer {
                Ok(resp) => {
                    let keep = if conn_done { None } else { Some(link) };
                    let pool = Arc::clone(self);
                    return Ok(resp.map(|body| http_body_util::BodyExt::boxed(PooledBody { body, conn: keep, pool })));
                }
                Err(mut e) => match e.take_message() {
                    Some(back) if reused => {
                        // Never written: the connection was closed under us. Once, on a new one.
                        tracing::debug!(upstream = %self.addr, error = %e.error(), "reused connection refused the request; retrying on a new one");
                        req = back;
                        fresh_only = true;
                    }
                    _ => return Err(PoolError::Request(e.into_error())),
                },
            }
        }
    }

    /// The newest idle connection that is still open and ready for a request, if any.
    async fn ready_idle(&self) -> Option<Box<Link>> {
        while let Some(Idle { mut link, .. }) = self.take() {
            let Link { send, conn } = &mut *link;
            // Poll the connection once first: a server that closed it is seen here (EOF), not by
            // the request. Then wait (driving it) until it takes a new request.
            let ready = poll_fn(|cx| {
                if Pin::new(&mut *conn).poll(cx).is_ready() {
                    return Poll::Ready(false);
                }
                send.poll_ready(cx).map(|r| r.is_ok())
            })
            .await;
            if ready {
                return Some(link);
            }
        }
        None
    }

    fn take(&self) -> Option<Idle> {
        let mut idle = self.idle.lock().ok()?;
        while let Some(i) = idle.pop_back() {
            if i.since.elapsed() >= self.idle_timeout {
                // The newest one expired: so did every older one.
                idle.clear();
                return None;
            }
            if !i.link.send.is_closed() {
                return Some(i);
            }
        }
        None
    }

    fn put(&self, link: Box<Link>) {
        if link.send.is_closed() {
            return;
        }
        let Ok(mut idle) = self.idle.lock() else { return };
        while idle.front().is_some_and(|i| i.since.elapsed() >= self.idle_timeout) {
            idle.pop_front();
        }
        if idle.len() < self.max_idle {
            idle.push_back(Idle { link, since: Instant::now() });
        }
    }

    async fn connect(&self) -> Result<Box<Link>, PoolError> {
        let stream = tokio::time::timeout(self.connect_timeout, TcpStream::connect(self.addr.as_str()))
            .await
            .map_err(|_| PoolError::Connect(std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timed out")))?
            .map_err(PoolError::Connect)?;
        stream.set_nodelay(true).map_err(PoolError::Connect)?;
        let (send, conn) = http1::handshake(TokioIo::new(stream)).await.map_err(PoolError::Request)?;
        Ok(Box::new(Link { send, conn }))
    }
}

/// An answer's body that drives its connection while it streams, and returns the connection to
/// its pool when it ended cleanly (dropped early or failed, the connection is closed).
struct PooledBody {
    body: Incoming,
    /// Taken when the connection goes back to the pool (or is dropped), so that happens once.
    conn: Option<Box<Link>>,
    pool: Arc<HostPool>,
}

impl PooledBody {
    fn release(&mut self) {
        if let Some(link) = self.conn.take() {
            self.pool.put(link);
        }
    }
}

impl HttpBody for PooledBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = self.get_mut();
        if let Some(link) = &mut this.conn {
            if Pin::new(&mut link.conn).poll(cx).is_ready() {
                // Closed (or failed): what it read is still in the body's channel.
                this.conn = None;
            }
        }
        let frame = std::task::ready!(Pin::new(&mut this.body).poll_frame(cx));
        match &frame {
            None => this.release(),
            Some(Ok(_)) if this.body.is_end_stream() => this.release(),
            Some(Ok(_)) => {}
            Some(Err(_)) => this.conn = None,
        }
        Poll::Ready(frame.map(|f| f.map_err(BodyError::new)))
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

impl Drop for PooledBody {
    fn drop(&mut self) {
        // A body read to its end (or empty, like a HEAD answer's) leaves a reusable connection.
        if self.body.is_end_stream() {
            self.release();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::{BodyExt, Empty, Full};
    use std::sync::atomic::{AtomicUsize, Ordering};

    fn get(path: &str) -> Request<Body> {
        Request::get(path)
            .header(http::header::HOST, "upstream")
            .body(Empty::new().map_err(|never| match never {}).boxed())
            .unwrap()
    }

    #[tokio::test]
    async fn idle_connections_are_bounded_per_endpoint_and_reused() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        // Three requests answered together: three connections at once.
        let together = Arc::new(tokio::sync::Barrier::new(3));
        let (count, barrier) = (accepted.clone(), together.clone());
        let server = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                count.fetch_add(1, Ordering::SeqCst);
                let barrier = barrier.clone();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                        let barrier = barrier.clone();
                        async move {
                            if req.uri().path() == "/together" {
                                barrier.wait().await;
                            }
                            Ok::<_, std::convert::Infallible>(Response::new(Full::new(Bytes::from_static(b"ok"))))
                        }
                    });
                    let _ =
                        hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), svc).await;
                });
            }
        });
        let pool = Arc::new(HostPool::new(addr.to_string(), Duration::from_secs(5), Duration::from_secs(90), 2));
        let call = |path: &'static str| {
            let pool = pool.clone();
            async move {
                let resp = pool.send(get(path)).await.expect("request failed");
                resp.into_body().collect().await.expect("body failed").to_bytes()
            }
        };
        let (a, b, c) = tokio::join!(call("/together"), call("/together"), call("/together"));
        assert_eq!((&a[..], &b[..], &c[..]), (&b"ok"[..], &b"ok"[..], &b"ok"[..]));
        assert_eq!(accepted.load(Ordering::SeqCst), 3);
        assert_eq!(pool.idle_count(), 2, "at most max_idle connections are kept");
        for _ in 0..5 {
            assert_eq!(&call("/one").await[..], b"ok");
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 3, "sequential requests reuse an idle connection");
        assert_eq!(pool.idle_count(), 2);
        server.abort();
    }

    #[tokio::test]
    async fn a_refused_connection_is_a_connect_error() {
        let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
        let pool = Arc::new(HostPool::new(dead.to_string(), Duration::from_secs(5), Duration::from_secs(90), 2));
        let e = pool.send(get("/")).await.expect_err("nothing listens there");
        assert!(matches!(e, PoolError::Connect(_)), "{e:?}");
    }
}

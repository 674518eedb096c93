//! Upstream HTTP/1.1 connections pooled per endpoint and driven on the request's own task.
//!
//! hyper-util's legacy client spawns a task per connection and hands each request to it over a
//! channel, so every forwarded request wakes a second task (often on another thread). Here the
//! request's task drives the connection itself: while it writes the request and waits for the
//! answer's head, and through the answer's body while it streams. A connection whose answer
//! ended cleanly goes back to its endpoint's idle list (bounded, with an idle timeout; the newest
//! is reused first); before reuse it is checked, so one the server closed meanwhile is dropped
//! instead of failing the request. The connections are [`super::h1`]'s own client, or
//! (`MODELGATE_UPSTREAM_CLIENT=hyper`) hyper's `client::conn::http1`.
//! Hand-written because hyper-util's pool is tied to its spawning client (no crate offers a pool
//! of client connections without a task per connection).

mod hyper_link;

use super::h1;
use super::upstream::Body;
use http::{Request, Response};
use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::net::TcpStream;

/// Why a pooled request failed: no connection could be made, or the exchange failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum PoolError {
    /// Connecting failed (refused, unreachable, or not within the connect timeout). The
    /// `io::Error` is the source, so callers walking the cause chain see its kind.
    #[error("{0}")]
    Connect(#[source] std::io::Error),
    /// The request or the answer's head failed on an open hyper connection.
    #[error(transparent)]
    Request(hyper::Error),
    /// The request or the answer's head failed on an open connection of our own client.
    #[error(transparent)]
    Exchange(h1::Error),
}

impl PoolError {
    /// The request itself is at fault, not the endpoint (see [`h1::Error::is_request_fault`]).
    pub(crate) fn is_request_fault(&self) -> bool {
        matches!(self, PoolError::Exchange(e) if e.is_request_fault())
    }
}

/// Which HTTP/1.1 client a pool's connections speak.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Client {
    /// [`super::h1`]: written for the proxy path.
    Own,
    /// hyper's `client::conn::http1` (a dispatch channel and state machine inside).
    Hyper,
}

/// One idle connection of either client. Boxed once when made, so handing it between the idle
/// list, the request and its body moves a pointer, not the connection's state.
enum Link {
    Own(Box<h1::Conn>),
    Hyper(Box<hyper_link::Link>),
}

impl Link {
    /// Known to be closed without a system call: a hyper connection whose dispatcher is gone
    /// (our own client's connections are checked when taken for a request).
    fn is_closed(&self) -> bool {
        matches!(self, Link::Hyper(link) if link.is_closed())
    }
}

/// A connection with nothing in flight.
struct Idle {
    link: Link,
    since: Instant,
}

/// The idle connections of one endpoint.
pub(crate) struct HostPool {
    /// `host:port` to connect to.
    addr: String,
    client: Client,
    connect_timeout: Duration,
    idle_timeout: Duration,
    max_idle: usize,
    /// Oldest first: taken from the back, expired ones leave from the front.
    idle: Mutex<VecDeque<Idle>>,
}

impl std::fmt::Debug for HostPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HostPool")
            .field("addr", &self.addr)
            .field("client", &self.client)
            .field("idle", &self.idle_count())
            .finish()
    }
}

impl HostPool {
    /// A pool for `addr` (`host:port`) speaking `client`, keeping at most `max_idle` idle
    /// connections, each for at most `idle_timeout`.
    pub fn new(
        addr: String,
        client: Client,
        connect_timeout: Duration,
        idle_timeout: Duration,
        max_idle: usize,
    ) -> HostPool {
        HostPool { addr, client, connect_timeout, idle_timeout, max_idle, idle: Mutex::new(VecDeque::new()) }
    }

    /// Idle connections now kept.
    pub fn idle_count(&self) -> usize {
        self.idle.lock().map_or(0, |l| l.len())
    }

    /// Sends `req` (origin-form URI, `Host` set) on an idle connection, else a new one, and
    /// answers with the head; the body streams on the caller's task and returns the connection
    /// when it ends. A request refused by a reused connection is sent once more on a new
    /// connection when that is safe: none of it was written, or it is idempotent, its body is
    /// whole at hand and no byte of an answer came (the server closed the idle connection under
    /// us, the race every keep-alive client meets).
    pub async fn send(self: &Arc<Self>, req: Request<Body>) -> Result<Response<Body>, PoolError> {
        match self.client {
            Client::Own => self.send_own(req).await,
            Client::Hyper => hyper_link::send(self, req).await,
        }
    }

    async fn send_own(self: &Arc<Self>, mut req: Request<Body>) -> Result<Response<Body>, PoolError> {
        let mut fresh_only = false;
        loop {
            let (conn, reused) = match if fresh_only { None } else { self.ready_own() } {
                Some(conn) => (conn, true),
                None => (h1::Conn::new(self.connect().await?), false),
            };
            match h1::send(conn, req, self).await {
                Ok(resp) => return Ok(resp),
                Err(h1::Refused { error, request: Some(back) }) if reused => {
                    tracing::debug!(upstream = %self.addr, %error, "reused connection refused the request; retrying on a new one");
                    req = back;
                    fresh_only = true;
                }
                Err(refused) => return Err(PoolError::Exchange(refused.error)),
            }
        }
    }

    /// The newest idle connection of our own client that the server has not closed, if any.
    fn ready_own(&self) -> Option<Box<h1::Conn>> {
        while let Some(link) = self.take() {
            if let Link::Own(mut conn) = link {
                if conn.is_reusable() {
                    return Some(conn);
                }
            }
        }
        None
    }

    /// The newest idle connection not expired (every older one goes if it has expired).
    fn take(&self) -> Option<Link> {
        let mut idle = self.idle.lock().ok()?;
        while let Some(i) = idle.pop_back() {
            if i.since.elapsed() >= self.idle_timeout {
                // The newest one expired: so did every older one.
                idle.clear();
                return None;
            }
            if !i.link.is_closed() {
                return Some(i.link);
            }
        }
        None
    }

    fn put(&self, link: Link) {
        if link.is_closed() {
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

    async fn connect(&self) -> Result<TcpStream, PoolError> {
        let stream = tokio::time::timeout(self.connect_timeout, TcpStream::connect(self.addr.as_str()))
            .await
            .map_err(|_| PoolError::Connect(std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timed out")))?
            .map_err(PoolError::Connect)?;
        stream.set_nodelay(true).map_err(PoolError::Connect)?;
        Ok(stream)
    }
}

impl h1::Recycle for HostPool {
    fn recycle(&self, conn: Box<h1::Conn>) {
        self.put(Link::Own(conn));
    }
}

#[cfg(test)]
mod tests;

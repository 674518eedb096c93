//! The pool's connections as hyper `client::conn::http1` pairs (`MODELGATE_UPSTREAM_CLIENT=hyper`):
//! the request's task polls the connection future while it waits for the answer's head, and
//! through [`PooledBody`] while the answer's body streams.

use super::{HostPool, PoolError};
use crate::backend::upstream::{Body, BodyError};
use bytes::Bytes;
use http::{Request, Response};
use hyper::body::{Body as HttpBody, Frame, Incoming, SizeHint};
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use std::future::{poll_fn, Future};
use std::pin::{pin, Pin};
use std::sync::Arc;
use std::task::{Context, Poll};
use tokio::net::TcpStream;

type Conn = http1::Connection<TokioIo<TcpStream>, Body>;

/// One connection: its request sender and the future that drives it.
pub(super) struct Link {
    send: http1::SendRequest<Body>,
    conn: Conn,
}

impl Link {
    /// Whether the connection has closed (its dispatcher is gone).
    pub fn is_closed(&self) -> bool {
        self.send.is_closed()
    }
}

/// [`HostPool::send`] over hyper connections.
pub(super) async fn send(pool: &Arc<HostPool>, mut req: Request<Body>) -> Result<Response<Body>, PoolError> {
    let mut fresh_only = false;
    loop {
        let (mut link, reused) = match if fresh_only { None } else { ready_idle(pool).await } {
            Some(link) => (link, true),
            None => (connect(pool).await?, false),
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
                let pool = Arc::clone(pool);
                return Ok(resp.map(|body| http_body_util::BodyExt::boxed(PooledBody { body, conn: keep, pool })));
            }
            Err(mut e) => match e.take_message() {
                Some(back) if reused => {
                    // Never written: the connection was closed under us. Once, on a new one.
                    tracing::debug!(upstream = %pool.addr, error = %e.error(), "reused connection refused the request; retrying on a new one");
                    req = back;
                    fresh_only = true;
                }
                _ => return Err(PoolError::Request(e.into_error())),
            },
        }
    }
}

/// The newest idle connection that is still open and ready for a request, if any.
async fn ready_idle(pool: &HostPool) -> Option<Box<Link>> {
    while let Some(link) = pool.take() {
        let super::Link::Hyper(mut link) = link else { continue };
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

async fn connect(pool: &HostPool) -> Result<Box<Link>, PoolError> {
    let stream = pool.connect().await?;
    let (send, conn) = http1::handshake(TokioIo::new(stream)).await.map_err(PoolError::Request)?;
    Ok(Box::new(Link { send, conn }))
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
            self.pool.put(super::Link::Hyper(link));
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

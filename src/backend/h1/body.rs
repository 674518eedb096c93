//! An answer's body read off its connection on the polling task; the connection goes back to
//! its pool when the body ended cleanly, and is closed when the body is dropped early or fails.

use super::decode::{Decoded, Framing, Head};
use super::{Conn, Error};
use crate::backend::upstream::{full, Body, BodyError};
use bytes::Bytes;
use http::Response;
use http_body_util::BodyExt;
use hyper::body::{Body as HttpBody, Frame, SizeHint};
use std::future::Future;
use std::pin::{pin, Pin};
use std::sync::Arc;
use std::task::{ready, Context, Poll};

/// Where a connection goes when the answer on it has ended cleanly.
pub(crate) trait Recycle: Send + Sync + 'static {
    /// Takes back `conn`, which may take another request.
    fn recycle(&self, conn: Box<Conn>);
}

/// The answer for `head` read on `conn`. A body already wholly read with the head (or none at
/// all) gives the connection back at once.
pub(super) fn answer<P: Recycle>(mut conn: Box<Conn>, head: Head, pool: &Arc<P>) -> Response<Body> {
    let Head { parts, framing, keep_alive } = head;
    if let Framing::Length(n) = framing {
        if n as usize <= conn.read.len() {
            let data = conn.read.split_to(n as usize).freeze();
            release(pool.as_ref(), conn, keep_alive);
            return Response::from_parts(parts, full(data));
        }
    }
    let body = ConnBody { conn: Some(conn), framing, keep_alive, pool: Arc::clone(pool) };
    Response::from_parts(parts, body.boxed())
}

/// Gives `conn`, whose answer has ended, back to `pool` when it may take another request: the
/// answer allowed it, and nothing beyond the answer was sent (bytes never asked for would be
/// read as the next answer's).
fn release<P: Recycle>(pool: &P, conn: Box<Conn>, reusable: bool) {
    if reusable && conn.read.is_empty() {
        pool.recycle(conn);
    }
}

/// An answer's body still to be read from its connection.
pub(crate) struct ConnBody<P: Recycle> {
    /// Gone once the body ended (given back, or closed).
    conn: Option<Box<Conn>>,
    framing: Framing,
    keep_alive: bool,
    pool: Arc<P>,
}

impl<P: Recycle> ConnBody<P> {
    /// The body ended: the connection goes back when it may take another request.
    fn finish(&mut self) {
        if let Some(conn) = self.conn.take() {
            release(self.pool.as_ref(), conn, self.keep_alive && self.framing.is_done());
        }
    }

    fn fail(&mut self, e: Error) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        self.conn = None;
        Poll::Ready(Some(Err(BodyError::new(e))))
    }
}

impl<P: Recycle> HttpBody for ConnBody<P> {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = self.get_mut();
        loop {
            let Some(conn) = this.conn.as_mut() else { return Poll::Ready(None) };
            match this.framing.decode(&mut conn.read) {
                Err(e) => return this.fail(e),
                Ok(Decoded::Data(data)) => {
                    if this.framing.is_done() {
                        this.finish();
                    }
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Ok(Decoded::End) => {
                    this.finish();
                    return Poll::Ready(None);
                }
                Ok(Decoded::More) => {}
            }
            let read = ready!(pin!(conn.fill()).poll(cx));
            match read {
                Ok(0) if matches!(this.framing, Framing::Eof) => {
                    // Close-delimited: the end of the connection is the end of the body.
                    this.conn = None;
                    return Poll::Ready(None);
                }
                Ok(0) => return this.fail(Error::ClosedInBody),
                Ok(_) => {}
                Err(e) => return this.fail(Error::Read(e)),
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.conn.is_none() || self.framing.is_done()
    }

    fn size_hint(&self) -> SizeHint {
        match self.framing.remaining() {
            Some(n) => SizeHint::with_exact(n),
            None => SizeHint::default(),
        }
    }
}

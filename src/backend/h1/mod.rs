//! An HTTP/1.1 client connection written for the proxy path: one request at a time, driven on
//! the request's own task, its answer's body read straight off the connection's buffer.
//!
//! hyper's `client::conn::http1` puts a dispatch channel, a want-signal and a generic state
//! machine between the request and the socket; a forwarded request needs none of them. The head
//! is written into one reused buffer (with a small body, in the same write), the answer's head is
//! parsed with `httparse` (hyper's own parser), and its body frames are split off the read
//! buffer without a copy. Hand-written because no crate offers an HTTP/1.1 client connection
//! without a task or channel of its own.
//!
//! Request trailers are not forwarded (HTTP/1.1 upstreams seldom read them; gRPC goes over h2).
//!
//! One request is written whole before its answer is read (no full duplex): an upstream that
//! answers before it has read the whole request body (an echo that streams back) can stall a
//! body larger than the socket buffers. Model servers read the request first.

mod body;
mod decode;
mod encode;
#[cfg(test)]
mod tests;

pub(crate) use body::Recycle;

use super::upstream::{Body, BodyError};
use bytes::BytesMut;
use http::{Method, Request, Response};
use std::io;
use std::sync::Arc;
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

/// The most an answer's head (status line and headers) may take; so may each of at most 16
/// interim (1xx) answers before it.
pub(crate) const MAX_HEAD: usize = 64 * 1024;
/// The most headers an answer's head may have.
pub(crate) const MAX_HEADERS: usize = 100;
/// Bytes asked of the socket per read.
const READ_SIZE: usize = 16 * 1024;

/// Why an exchange on a connection failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum Error {
    /// Writing the request failed (the `io::Error` is the source).
    #[error("writing the request failed")]
    Write(#[source] io::Error),
    /// Reading the answer failed (the `io::Error` is the source).
    #[error("reading the answer failed")]
    Read(#[source] io::Error),
    /// The connection ended before any byte of an answer.
    #[error("the upstream closed the connection before answering")]
    ClosedBeforeHead,
    /// The connection was reset before any byte of an answer.
    #[error("the upstream reset the connection before answering")]
    ResetBeforeHead(#[source] io::Error),
    /// The connection ended within the answer's head.
    #[error("the upstream closed the connection in the middle of the answer's head")]
    ClosedInHead,
    /// The connection ended before the answer's body did.
    #[error("the upstream closed the connection before the answer's body ended")]
    ClosedInBody,
    /// The answer's head is over [`MAX_HEAD`] bytes.
    #[error("the answer's head is larger than {MAX_HEAD} bytes")]
    HeadTooLarge,
    /// The answer's head is not HTTP/1.x.
    #[error("malformed answer head: {0}")]
    MalformedHead(String),
    /// The answer's body framing is broken.
    #[error("malformed answer body: {0}")]
    MalformedBody(&'static str),
    /// The request body failed (the client's connection, or a size limit).
    #[error("the request body failed")]
    Body(#[source] BodyError),
    /// The request body's length is not the one its `Content-Length` declared.
    #[error("the request body has {sent} bytes where its content-length says {declared}")]
    BodyLength { declared: u64, sent: u64 },
    /// The request's own `Content-Length` is not a number.
    #[error("the request's content-length is not a number")]
    RequestLength,
    /// A request this client does not forward.
    #[error("{0} requests are not forwarded to HTTP/1.1 upstreams")]
    Unsupported(&'static str),
}

impl Error {
    /// The request itself is at fault (a body of another length than declared, a content-length
    /// that is no number, a method not forwarded), not the connection or the server.
    pub(crate) fn is_request_fault(&self) -> bool {
        matches!(self, Error::BodyLength { .. } | Error::RequestLength | Error::Unsupported(_))
    }
}

/// A failed exchange, with the request when it may go once more on another connection: none of
/// it was written, or the method is idempotent, the whole body is still at hand and not a byte
/// of an answer came (the server closed a kept-alive connection under us).
pub(crate) struct Refused {
    pub error: Error,
    pub request: Option<Request<Body>>,
}

/// One open connection to an upstream, with its buffers (kept across requests).
pub(crate) struct Conn {
    io: TcpStream,
    /// What was read and not yet parsed or handed out.
    read: BytesMut,
    /// The request head being written.
    write: Vec<u8>,
}

impl Conn {
    /// A connection over `io` (connected, `TCP_NODELAY` set by the caller).
    pub fn new(io: TcpStream) -> Box<Conn> {
        Box::new(Conn { io, read: BytesMut::with_capacity(READ_SIZE), write: Vec::with_capacity(1024) })
    }

    /// Whether an idle connection may take a request: the server has not closed it and sent
    /// nothing unasked. Costs no system call unless the socket was reported readable.
    pub fn is_reusable(&mut self) -> bool {
        if !self.read.is_empty() {
            return false;
        }
        matches!(self.io.try_read_buf(&mut self.read), Err(e) if e.kind() == io::ErrorKind::WouldBlock)
    }

    /// Reads once more from the socket into the read buffer; `Ok(0)` at its end.
    async fn fill(&mut self) -> io::Result<usize> {
        self.read.reserve(READ_SIZE);
        self.io.read_buf(&mut self.read).await
    }
}

/// Sends `req` (origin-form URI, `Host` set) on `conn` and answers with the head; the body reads
/// the connection as it is polled and gives it to `pool` when it ended cleanly.
pub(crate) async fn send<P: Recycle>(
    mut conn: Box<Conn>,
    req: Request<Body>,
    pool: &Arc<P>,
) -> Result<Response<Body>, Refused> {
    let (parts, body) = req.into_parts();
    let head_only = parts.method == Method::HEAD;
    let idempotent = super::upstream::is_idempotent(&parts.method);
    let (error, again) = match encode::write_request(&mut conn, &parts, body).await {
        Err(fail) if fail.wrote && matches!(fail.error, Error::Write(_)) => {
            // The upstream may have answered before it took the whole body (a 413, say) and
            // closed: that answer is the one to pass on. The socket failed, so this read ends.
            match read_head(&mut conn, head_only).await {
                Ok(mut head) => {
                    head.keep_alive = false;
                    return Ok(body::answer(conn, head, pool));
                }
                Err(_) => (fail.error, None),
            }
        }
        Err(fail) => (fail.error, fail.body.filter(|_| !fail.wrote)),
        Ok(kept) => match read_head(&mut conn, head_only).await {
            Ok(head) => return Ok(body::answer(conn, head, pool)),
            Err(e @ (Error::ClosedBeforeHead | Error::ResetBeforeHead(_))) => {
                (e, if idempotent { kept.into_body() } else { None })
            }
            Err(e) => (e, None),
        },
    };
    Err(Refused { error, request: again.map(|body| Request::from_parts(parts, body)) })
}

/// Reads until a final answer's head is parsed (interim 1xx answers are skipped).
async fn read_head(conn: &mut Conn, head_only: bool) -> Result<decode::Head, Error> {
    let mut answered = false;
    // How far the buffer was searched for a head's end: an upstream trickling its head a byte
    // at a time costs a scan of each new byte, not a parse of the whole head per read.
    let mut scanned = 0usize;
    loop {
        if !conn.read.is_empty() {
            answered = true;
            let from = scanned.saturating_sub(3);
            if conn.read[from..].windows(2).any(|w| w == b"\n\n" || w == b"\n\r") {
                if let Some(head) = decode::parse_head(&mut conn.read, head_only)? {
                    return Ok(head);
                }
            }
            // What is left (interim answers may have been taken off the front) has been searched.
            scanned = conn.read.len();
            if conn.read.len() >= MAX_HEAD {
                return Err(Error::HeadTooLarge);
            }
        }
        match conn.fill().await {
            Ok(0) if answered => return Err(Error::ClosedInHead),
            Ok(0) => return Err(Error::ClosedBeforeHead),
            Ok(_) => {}
            Err(e) if !answered && e.kind() == io::ErrorKind::ConnectionReset => return Err(Error::ResetBeforeHead(e)),
            Err(e) => return Err(Error::Read(e)),
        }
    }
}

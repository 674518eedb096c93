//! Writing a request: its head into the connection's reused buffer, a whole small body in the
//! same write, a body of unknown size chunked as it streams.

use super::decode::content_length;
use super::{Conn, Error};
use crate::backend::upstream::{full, Body};
use bytes::Bytes;
use http::header::{CONTENT_LENGTH, TRANSFER_ENCODING};
use http::request::Parts;
use http::Method;
use http_body_util::BodyExt;
use hyper::body::Body as _;
use std::future::poll_fn;
use std::io::{self, IoSlice, Write as _};
use std::pin::Pin;
use std::task::Poll;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

/// A failed write: whether any byte went out, and the body when none of it was consumed.
pub(super) struct WriteFail {
    pub error: Error,
    pub wrote: bool,
    pub body: Option<Body>,
}

/// The request's body as far as it is still at hand after the write, should it go again.
pub(super) enum Kept {
    /// Untouched (or ended without data).
    Whole(Body),
    /// Read whole: these bytes.
    Data(Bytes),
    /// Partly or wholly streamed out.
    Gone,
}

impl Kept {
    /// The body to send once more, if there is one.
    pub fn into_body(self) -> Option<Body> {
        match self {
            Kept::Whole(body) => Some(body),
            Kept::Data(data) => Some(full(data)),
            Kept::Gone => None,
        }
    }
}

enum Framing {
    Length(u64),
    Chunked,
}

const CRLF: &[u8] = b"\r\n";
/// The most a connection's head buffer keeps between requests.
const KEPT_HEAD_CAPACITY: usize = 8 * 1024;
const LAST_CHUNK: &[u8] = b"0\r\n\r\n";
const CRLF_LAST_CHUNK: &[u8] = b"\r\n0\r\n\r\n";

/// Writes the request: head and, when its body is already whole, the body in one write; else
/// the head (with the first frame if ready) and then each frame as it comes.
pub(super) async fn write_request(conn: &mut Conn, parts: &Parts, mut body: Body) -> Result<Kept, WriteFail> {
    let fail = |error, wrote, body| WriteFail { error, wrote, body };
    let framing = match head(&mut conn.write, parts, &body) {
        Ok(framing) => framing,
        // Refused before a byte went out, and a fresh connection would refuse it the same way.
        Err(e) => return Err(fail(e, false, None)),
    };
    // The first frame if it is there now: the head never waits for the body.
    let mut data = Bytes::new();
    let mut ended = body.is_end_stream();
    if !ended {
        match poll_fn(|cx| Poll::Ready(Pin::new(&mut body).poll_frame(cx))).await {
            Poll::Pending => {}
            Poll::Ready(None) => ended = true,
            Poll::Ready(Some(Err(e))) => return Err(fail(Error::Body(e), false, None)),
            Poll::Ready(Some(Ok(frame))) => {
                data = frame.into_data().unwrap_or_default();
                ended = body.is_end_stream();
            }
        }
    }
    let mut sent = data.len() as u64;
    if let Framing::Length(declared) = framing {
        if sent > declared {
            return Err(fail(Error::BodyLength { declared, sent }, false, None));
        }
    }
    let mut wrote = false;
    let mut line = [0u8; 18];
    {
        let Conn { io, write, .. } = conn;
        let mut slices = [IoSlice::new(write), IoSlice::new(&[]), IoSlice::new(&[]), IoSlice::new(&[])];
        let mut n = 1;
        match framing {
            Framing::Length(_) if !data.is_empty() => {
                slices[1] = IoSlice::new(&data);
                n = 2;
            }
            Framing::Chunked if !data.is_empty() => {
                slices[1] = IoSlice::new(chunk_line(&mut line, data.len()));
                slices[2] = IoSlice::new(&data);
                slices[3] = IoSlice::new(if ended { CRLF_LAST_CHUNK } else { CRLF });
                n = 4;
            }
            Framing::Chunked if ended => {
                slices[1] = IoSlice::new(LAST_CHUNK);
                n = 2;
            }
            _ => {}
        }
        if let Err(e) = write_all(io, &mut slices[..n], &mut wrote).await {
            // What of the body is still at hand for another connection: all of it when no frame
            // was taken, the one frame taken when it was the whole body, else nothing.
            let body = if data.is_empty() {
                Some(body)
            } else if ended {
                Some(full(data))
            } else {
                None
            };
            return Err(fail(Error::Write(e), wrote, body));
        }
    }
    let kept = match (ended, data.is_empty()) {
        (true, true) => Kept::Whole(body),
        (true, false) => Kept::Data(data),
        (false, _) => {
            stream(conn, &framing, &mut body, &mut sent).await.map_err(|e| fail(e, true, None))?;
            Kept::Gone
        }
    };
    match framing {
        Framing::Length(declared) if declared != sent => Err(fail(Error::BodyLength { declared, sent }, true, None)),
        _ => Ok(kept),
    }
}

/// Writes the body's frames as they come, then the last chunk when chunked.
async fn stream(conn: &mut Conn, framing: &Framing, body: &mut Body, sent: &mut u64) -> Result<(), Error> {
    let mut wrote = true;
    let mut line = [0u8; 18];
    while let Some(frame) = body.frame().await {
        let Ok(data) = frame.map_err(Error::Body)?.into_data() else { continue };
        if data.is_empty() {
            continue;
        }
        *sent += data.len() as u64;
        if let Framing::Length(declared) = *framing {
            if *sent > declared {
                return Err(Error::BodyLength { declared, sent: *sent });
            }
        }
        let result = match framing {
            Framing::Length(_) => write_all(&mut conn.io, &mut [IoSlice::new(&data)], &mut wrote).await,
            Framing::Chunked => {
                let head = chunk_line(&mut line, data.len());
                let mut slices = [IoSlice::new(head), IoSlice::new(&data), IoSlice::new(CRLF)];
                write_all(&mut conn.io, &mut slices, &mut wrote).await
            }
        };
        result.map_err(Error::Write)?;
    }
    if let Framing::Chunked = framing {
        write_all(&mut conn.io, &mut [IoSlice::new(LAST_CHUNK)], &mut wrote).await.map_err(Error::Write)?;
    }
    Ok(())
}

/// Writes the request line and headers into `buf`, adding the body's framing header when the
/// request has none: `Content-Length` when its size is known, else chunked.
fn head(buf: &mut Vec<u8>, parts: &Parts, body: &Body) -> Result<Framing, Error> {
    if parts.method == Method::CONNECT {
        // A 2xx answer would turn the connection into a tunnel: not a pooled exchange.
        return Err(Error::Unsupported("CONNECT"));
    }
    // One big head (a client may send hundreds of KiB of headers) is not kept for the life of
    // the pooled connection.
    if buf.capacity() > KEPT_HEAD_CAPACITY {
        *buf = Vec::with_capacity(1024);
    }
    buf.clear();
    buf.extend_from_slice(parts.method.as_str().as_bytes());
    buf.push(b' ');
    buf.extend_from_slice(parts.uri.path_and_query().map_or("/", |p| p.as_str()).as_bytes());
    buf.extend_from_slice(b" HTTP/1.1\r\n");
    let mut declared = None;
    for (name, value) in &parts.headers {
        if name == TRANSFER_ENCODING {
            // The framing is ours to choose.
            continue;
        }
        if name == CONTENT_LENGTH {
            // Written once below, in canonical form.
            let n = content_length(value.as_bytes()).ok_or(Error::RequestLength)?;
            if declared.is_some_and(|d| d != n) {
                return Err(Error::RequestLength);
            }
            declared = Some(n);
            continue;
        }
        buf.extend_from_slice(name.as_str().as_bytes());
        buf.extend_from_slice(b": ");
        buf.extend_from_slice(value.as_bytes());
        buf.extend_from_slice(CRLF);
    }
    let framing = match declared {
        Some(n) => {
            // Writing into a Vec does not fail.
            let _ = write!(buf, "content-length: {n}\r\n");
            Framing::Length(n)
        }
        None if body.is_end_stream() => {
            // Methods that carry a body say it is empty; the others send no framing at all.
            if !matches!(parts.method, Method::GET | Method::HEAD | Method::DELETE | Method::OPTIONS | Method::TRACE) {
                buf.extend_from_slice(b"content-length: 0\r\n");
            }
            Framing::Length(0)
        }
        None => match body.size_hint().exact() {
            Some(n) => {
                // Writing into a Vec does not fail.
                let _ = write!(buf, "content-length: {n}\r\n");
                Framing::Length(n)
            }
            None => {
                buf.extend_from_slice(b"transfer-encoding: chunked\r\n");
                Framing::Chunked
            }
        },
    };
    buf.extend_from_slice(CRLF);
    Ok(framing)
}

/// `len` in hex and CRLF: a chunk's size line.
fn chunk_line(line: &mut [u8; 18], len: usize) -> &[u8] {
    let digits = (usize::BITS - len.leading_zeros()).div_ceil(4).max(1) as usize;
    for (i, slot) in line[..digits].iter_mut().enumerate() {
        let nibble = (len >> (4 * (digits - 1 - i))) & 0xf;
        *slot = b"0123456789abcdef"[nibble];
    }
    line[digits..digits + 2].copy_from_slice(CRLF);
    &line[..digits + 2]
}

/// Writes every slice, as few writes as the socket allows; `wrote` turns true with the first
/// byte out.
async fn write_all(io: &mut TcpStream, mut bufs: &mut [IoSlice<'_>], wrote: &mut bool) -> io::Result<()> {
    IoSlice::advance_slices(&mut bufs, 0);
    while !bufs.is_empty() {
        let n = io.write_vectored(bufs).await?;
        if n == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        *wrote = true;
        IoSlice::advance_slices(&mut bufs, n);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::chunk_line;

    #[test]
    fn chunk_lines_are_lower_hex() {
        let mut line = [0u8; 18];
        assert_eq!(chunk_line(&mut line, 0), b"0\r\n");
        assert_eq!(chunk_line(&mut line, 255), b"ff\r\n");
        assert_eq!(chunk_line(&mut line, 0x1_0000), b"10000\r\n");
        assert_eq!(chunk_line(&mut line, usize::MAX), b"ffffffffffffffff\r\n");
    }
}

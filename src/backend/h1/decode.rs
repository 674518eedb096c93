//! Reading an answer: its head parsed with `httparse` into `http::response::Parts`, its body's
//! framing (length, chunked, to the end of the connection), and the decoding of that framing.

use super::{Error, MAX_HEADERS};
use bytes::{Bytes, BytesMut};
use http::header::{HeaderName, HeaderValue, CONNECTION, CONTENT_LENGTH, TRANSFER_ENCODING};
use http::{response, HeaderMap, Response, StatusCode, Version};
use std::mem::MaybeUninit;

/// The most a chunk's size line (with extensions) may take.
const MAX_CHUNK_LINE: usize = 4096;
/// The most the trailers after the last chunk may take (they are read and dropped).
const MAX_TRAILERS: usize = 64 * 1024;
/// The most interim (1xx) answers taken before the final one.
const MAX_INTERIM: usize = 16;

/// A final answer's head and what it says about its body and connection.
pub(super) struct Head {
    pub parts: response::Parts,
    pub framing: Framing,
    /// Whether the connection may take another request once this answer ends.
    pub keep_alive: bool,
}

/// How an answer's body is delimited, and how much of it is left.
#[derive(Debug)]
pub(super) enum Framing {
    /// This many bytes left (none: the body has ended).
    Length(u64),
    /// Chunked, at this step.
    Chunked(Chunk),
    /// Everything until the server closes the connection.
    Eof,
}

/// Where a chunked body's decoding stands.
#[derive(Debug, Clone, Copy)]
pub(super) enum Chunk {
    /// At a size line.
    Size,
    /// In a chunk's data, this many bytes left.
    Data(u64),
    /// At the CRLF after a chunk's data.
    DataEnd,
    /// In the trailers after the last chunk, having read this many bytes of them.
    Trailers(usize),
    /// Past the end.
    Done,
}

/// What the buffer gave.
pub(super) enum Decoded {
    Data(Bytes),
    /// More must be read first.
    More,
    /// The body ended.
    End,
}

/// Parses a final answer's head off `buf`, skipping interim 1xx answers; `None` while it is not
/// all there. `head_only`: the request was `HEAD`, so the answer has no body.
pub(super) fn parse_head(buf: &mut BytesMut, head_only: bool) -> Result<Option<Head>, Error> {
    let mut interim = 0;
    loop {
        // Where each header's name and value lie in the head: the parsed slices borrow `buf`,
        // which is split (without a copy) before the header map is made.
        let mut spans = [(0u32, 0u32, 0u32, 0u32); MAX_HEADERS];
        let (len, code, minor, count) = {
            let mut headers = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
            let mut answer = httparse::Response::new(&mut []);
            let len = match httparse::ParserConfig::default().parse_response_with_uninit_headers(
                &mut answer,
                buf,
                &mut headers,
            ) {
                Ok(httparse::Status::Complete(len)) => len,
                Ok(httparse::Status::Partial) => return Ok(None),
                Err(e) => return Err(Error::MalformedHead(e.to_string())),
            };
            let base = buf.as_ptr() as usize;
            for (span, h) in spans.iter_mut().zip(answer.headers.iter()) {
                let (name, value) = (h.name.as_ptr() as usize - base, h.value.as_ptr() as usize - base);
                // Within the head, which is far below 4 GiB.
                *span = (name as u32, (name + h.name.len()) as u32, value as u32, (value + h.value.len()) as u32);
            }
            (len, answer.code.unwrap_or(0), answer.version.unwrap_or(1), answer.headers.len())
        };
        let status = StatusCode::from_u16(code).map_err(|e| Error::MalformedHead(e.to_string()))?;
        if status.is_informational() {
            if status == StatusCode::SWITCHING_PROTOCOLS {
                return Err(Error::MalformedHead(
                    "101 Switching Protocols to a request that asked for no upgrade".into(),
                ));
            }
            // Bounded: an upstream sending `102 Processing` forever is stopped here, not by the
            // request's deadline alone.
            interim += 1;
            if interim > MAX_INTERIM {
                return Err(Error::MalformedHead(format!("more than {MAX_INTERIM} interim (1xx) answers")));
            }
            let _ = buf.split_to(len);
            continue;
        }
        let version = if minor == 0 { Version::HTTP_10 } else { Version::HTTP_11 };
        // Header values share the head's bytes; names are parsed (standard ones need no allocation).
        let bytes = buf.split_to(len).freeze();
        let mut map = HeaderMap::with_capacity(count);
        for &(n0, n1, v0, v1) in &spans[..count] {
            let name = HeaderName::from_bytes(&bytes[n0 as usize..n1 as usize])
                .map_err(|e| Error::MalformedHead(e.to_string()))?;
            let value = HeaderValue::from_maybe_shared(bytes.slice(v0 as usize..v1 as usize))
                .map_err(|e| Error::MalformedHead(e.to_string()))?;
            map.append(name, value);
        }
        let framing = framing(status, &map, head_only)?;
        // Transfer-Encoding wins over Content-Length (RFC 9112 §6.3), which is not passed on;
        // an answer with both is a smuggling pattern, so its connection is not used again.
        let both = map.contains_key(TRANSFER_ENCODING) && map.remove(CONTENT_LENGTH).is_some();
        let keep_alive = !both
            && version == Version::HTTP_11
            && !matches!(framing, Framing::Eof)
            && !map.get_all(CONNECTION).iter().any(|v| has_token(v, "close"));
        let (mut parts, ()) = Response::new(()).into_parts();
        parts.status = status;
        parts.version = version;
        parts.headers = map;
        return Ok(Some(Head { parts, framing, keep_alive }));
    }
}

/// The body's framing (RFC 9112 §6.3).
fn framing(status: StatusCode, headers: &HeaderMap, head_only: bool) -> Result<Framing, Error> {
    if head_only || status == StatusCode::NO_CONTENT || status == StatusCode::NOT_MODIFIED {
        return Ok(Framing::Length(0));
    }
    let mut codings = headers.get_all(TRANSFER_ENCODING).iter().peekable();
    if codings.peek().is_some() {
        // Only `chunked` alone: another coding would reach the client coded but unlabelled (the
        // header is hop-by-hop), and `chunked, chunked` is a desync pattern. As Envoy does.
        let mut names = codings.flat_map(|v| v.as_bytes().split(|&b| b == b',')).map(|c| c.trim_ascii());
        return match (names.next(), names.next()) {
            (Some(c), None) if c.eq_ignore_ascii_case(b"chunked") => Ok(Framing::Chunked(Chunk::Size)),
            _ => Err(Error::MalformedHead("transfer-encoding other than a single `chunked`".into())),
        };
    }
    let mut length = None;
    for v in headers.get_all(CONTENT_LENGTH) {
        let n = content_length(v.as_bytes());
        match (n, length) {
            (None, _) => return Err(Error::MalformedHead("content-length is not a number".into())),
            (Some(n), Some(l)) if n != l => return Err(Error::MalformedHead("content-length values differ".into())),
            (Some(n), _) => length = Some(n),
        }
    }
    Ok(length.map_or(Framing::Eof, Framing::Length))
}

/// A Content-Length value: digits only (no sign, no spaces inside; `str::parse` would take `+5`).
pub(super) fn content_length(value: &[u8]) -> Option<u64> {
    let digits = value.trim_ascii();
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(digits).ok()?.parse().ok()
}

fn has_token(value: &HeaderValue, token: &str) -> bool {
    value.to_str().is_ok_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
}

impl Framing {
    /// Whether the body has ended (all of it decoded).
    pub fn is_done(&self) -> bool {
        matches!(self, Framing::Length(0) | Framing::Chunked(Chunk::Done))
    }

    /// Bytes of the body left, when known.
    pub fn remaining(&self) -> Option<u64> {
        match self {
            Framing::Length(n) => Some(*n),
            Framing::Chunked(Chunk::Done) => Some(0),
            _ => None,
        }
    }

    /// Takes the next piece of body off `buf`.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Decoded, Error> {
        match self {
            Framing::Length(0) => Ok(Decoded::End),
            Framing::Length(left) => {
                if buf.is_empty() {
                    return Ok(Decoded::More);
                }
                let n = (*left).min(buf.len() as u64);
                *left -= n;
                Ok(Decoded::Data(buf.split_to(n as usize).freeze()))
            }
            Framing::Eof if buf.is_empty() => Ok(Decoded::More),
            Framing::Eof => Ok(Decoded::Data(buf.split().freeze())),
            Framing::Chunked(step) => decode_chunked(step, buf),
        }
    }
}

fn decode_chunked(step: &mut Chunk, buf: &mut BytesMut) -> Result<Decoded, Error> {
    loop {
        match *step {
            Chunk::Size => {
                let Some(end) = line_end(buf, MAX_CHUNK_LINE, "chunk size line too long")? else {
                    return Ok(Decoded::More);
                };
                let line = buf.split_to(end);
                let digits = line.iter().take_while(|b| b.is_ascii_hexdigit()).count();
                if digits == 0 || digits > 16 || !size_line_rest_ok(&line[digits..]) {
                    return Err(Error::MalformedBody("bad chunk size"));
                }
                let size = line[..digits].iter().fold(0u64, |n, &b| (n << 4) | u64::from(hex(b)));
                *step = if size == 0 { Chunk::Trailers(0) } else { Chunk::Data(size) };
            }
            Chunk::Data(left) => {
                if buf.is_empty() {
                    return Ok(Decoded::More);
                }
                let n = left.min(buf.len() as u64);
                *step = if n == left { Chunk::DataEnd } else { Chunk::Data(left - n) };
                return Ok(Decoded::Data(buf.split_to(n as usize).freeze()));
            }
            Chunk::DataEnd => {
                if buf.len() < 2 {
                    return Ok(Decoded::More);
                }
                if &buf[..2] != b"\r\n" {
                    return Err(Error::MalformedBody("chunk data not followed by CRLF"));
                }
                let _ = buf.split_to(2);
                *step = Chunk::Size;
            }
            Chunk::Trailers(seen) => {
                let Some(end) = line_end(buf, MAX_TRAILERS - seen, "trailers too long")? else {
                    return Ok(Decoded::More);
                };
                let line = buf.split_to(end);
                // Only the empty line ends the body (a short trailer line like `x\n` does not).
                *step = if &line[..] == b"\r\n" { Chunk::Done } else { Chunk::Trailers(seen + end) };
            }
            Chunk::Done => return Ok(Decoded::End),
        }
    }
}

/// What may follow a chunk size (RFC 9112 §7.1): optional whitespace, `;` extensions, CRLF.
fn size_line_rest_ok(rest: &[u8]) -> bool {
    let Some(rest) = rest.strip_suffix(b"\r\n") else { return false };
    let ws = rest.iter().take_while(|&&b| b == b' ' || b == b'\t').count();
    match &rest[ws..] {
        [] => true,
        [b';', ext @ ..] => !ext.contains(&b'\r'),
        _ => false,
    }
}

/// The length of the first line in `buf` with its line feed, if it is all there; an error when
/// no line end is within `max` bytes.
fn line_end(buf: &[u8], max: usize, too_long: &'static str) -> Result<Option<usize>, Error> {
    match buf.iter().take(max).position(|&b| b == b'\n') {
        Some(i) => Ok(Some(i + 1)),
        None if buf.len() >= max => Err(Error::MalformedBody(too_long)),
        None => Ok(None),
    }
}

fn hex(b: u8) -> u8 {
    match b {
        b'0'..=b'9' => b - b'0',
        b'a'..=b'f' => b - b'a' + 10,
        _ => b - b'A' + 10,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunked(input: &[&[u8]]) -> Result<Vec<u8>, Error> {
        let mut framing = Framing::Chunked(Chunk::Size);
        let mut buf = BytesMut::new();
        let mut out = Vec::new();
        for piece in input {
            buf.extend_from_slice(piece);
            loop {
                match framing.decode(&mut buf)? {
                    Decoded::Data(d) => out.extend_from_slice(&d),
                    Decoded::More => break,
                    Decoded::End => return Ok(out),
                }
            }
        }
        Err(Error::ClosedInBody)
    }

    #[test]
    fn chunked_bodies_decode_across_any_split() {
        let whole: &[u8] = b"5;name=v\r\nhello\r\nB\r\n, chunked!!\r\n0\r\nx-t: 1\r\n\r\n";
        for cut in 1..whole.len() {
            let out = chunked(&[&whole[..cut], &whole[cut..]]).unwrap_or_else(|e| panic!("cut {cut}: {e}"));
            assert_eq!(out, b"hello, chunked!!", "cut {cut}");
        }
    }

    #[test]
    fn transfer_encoding_wins_over_content_length() {
        let mut buf =
            BytesMut::from(&b"HTTP/1.1 200 OK\r\ncontent-length: 99\r\ntransfer-encoding: chunked\r\n\r\n"[..]);
        let head = parse_head(&mut buf, false).unwrap().expect("a whole head");
        assert!(matches!(head.framing, Framing::Chunked(Chunk::Size)), "{:?}", head.framing);
        assert!(!head.parts.headers.contains_key(CONTENT_LENGTH), "a length the body does not have is not passed on");
        assert!(!head.keep_alive, "an answer with both framings is a smuggling pattern: its connection is not reused");
        let mut buf = BytesMut::from(&b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n"[..]);
        assert!(parse_head(&mut buf, false).unwrap().expect("a whole head").keep_alive);
    }

    fn head_of(text: &str) -> Result<Head, Error> {
        parse_head(&mut BytesMut::from(text.as_bytes()), false).map(|h| h.expect("a whole head"))
    }

    #[test]
    fn framing_headers_are_read_strictly() {
        for refused in [
            "HTTP/1.1 200 OK\r\ncontent-length: +5\r\n\r\n",
            "HTTP/1.1 200 OK\r\ncontent-length: 5 5\r\n\r\n",
            "HTTP/1.1 200 OK\r\ncontent-length: 5\r\ncontent-length: 6\r\n\r\n",
            "HTTP/1.1 200 OK\r\ntransfer-encoding: gzip, chunked\r\n\r\n",
            "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ntransfer-encoding: chunked\r\n\r\n",
            "HTTP/1.1 200 OK\r\ntransfer-encoding: gzip\r\n\r\n",
        ] {
            assert!(matches!(head_of(refused), Err(Error::MalformedHead(_))), "{refused:?}");
        }
        let same_twice = head_of("HTTP/1.1 200 OK\r\ncontent-length: 5\r\ncontent-length: 5\r\n\r\n").unwrap();
        assert!(matches!(same_twice.framing, Framing::Length(5)));
        let interim = "HTTP/1.1 102 Processing\r\n\r\n".repeat(MAX_INTERIM);
        assert!(head_of(&format!("{interim}HTTP/1.1 204 No Content\r\n\r\n")).is_ok());
        let endless = format!("{interim}HTTP/1.1 102 Processing\r\n\r\nHTTP/1.1 204 No Content\r\n\r\n");
        assert!(matches!(head_of(&endless), Err(Error::MalformedHead(_))), "interim answers are bounded");
    }

    #[test]
    fn chunk_size_lines_and_trailers_are_read_strictly() {
        assert_eq!(chunked(&[b"5 ;ext=1\r\nhello\r\n0\r\n\r\n"]).unwrap(), b"hello");
        for bad in [&b"0x5\r\nhello\r\n0\r\n\r\n"[..], b"5garbage\r\nhello\r\n0\r\n\r\n", b"5\nhello\r\n0\r\n\r\n"] {
            assert!(matches!(chunked(&[bad]), Err(Error::MalformedBody(_))), "{:?}", String::from_utf8_lossy(bad));
        }
        // A two-byte trailer line is a trailer, not the end: the body ends at the blank line.
        let mut framing = Framing::Chunked(Chunk::Size);
        let mut buf = BytesMut::from(&b"0\r\nx\n"[..]);
        assert!(matches!(framing.decode(&mut buf), Ok(Decoded::More)));
        assert!(!framing.is_done(), "the body has not ended before its blank line");
        buf.extend_from_slice(b"\r\n");
        assert!(matches!(framing.decode(&mut buf), Ok(Decoded::End)));
    }

    #[test]
    fn broken_chunked_bodies_are_errors_not_allocations() {
        assert!(matches!(chunked(&[b"zz\r\n"]), Err(Error::MalformedBody(_))));
        assert!(matches!(chunked(&[b"2\r\nabX\r\n"]), Err(Error::MalformedBody(_))));
        assert!(matches!(chunked(&[b"11111111111111111\r\n"]), Err(Error::MalformedBody(_))));
        let endless = vec![b'1'; MAX_CHUNK_LINE];
        assert!(matches!(chunked(&[&endless]), Err(Error::MalformedBody("chunk size line too long"))));
    }
}

//! The client against raw servers on 127.0.0.1, through the pool that uses it.

use crate::backend::pool::{Client, HostPool, PoolError};
use crate::backend::upstream::{full, Body, BodyError};
use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Frame;
use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// A bound on how long a test waits for anything (a broken client hangs instead of failing).
const WAIT: Duration = Duration::from_secs(10);

async fn within<F: Future>(f: F) -> F::Output {
    tokio::time::timeout(WAIT, f).await.expect("timed out")
}

fn request(method: Method, path: &str, body: Body) -> Request<Body> {
    Request::builder().method(method).uri(path).header(http::header::HOST, "upstream").body(body).unwrap()
}

fn get(path: &str) -> Request<Body> {
    request(Method::GET, path, full(Bytes::new()))
}

/// A server that runs `serve` on every connection it accepts, counting them.
struct Server {
    pool: Arc<HostPool>,
    accepted: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Server {
    async fn start<F, Fut>(serve: F) -> Server
    where
        F: Fn(TcpStream) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let count = accepted.clone();
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                count.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(serve(stream));
            }
        });
        let pool =
            Arc::new(HostPool::new(addr.to_string(), Client::Own, Duration::from_secs(5), Duration::from_secs(90), 8));
        Server { pool, accepted, task }
    }

    fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }

    /// Sends `req` and reads the whole answer.
    async fn call(&self, req: Request<Body>) -> Result<(StatusCode, Bytes), PoolError> {
        let resp = within(self.pool.send(req)).await?;
        let status = resp.status();
        let body = within(resp.into_body().collect()).await.expect("body failed").to_bytes();
        Ok((status, body))
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Reads one request (head and body, by content-length or chunked) off `s`; `None` at its end.
/// `buf` keeps what was read beyond it.
async fn read_request(s: &mut TcpStream, buf: &mut Vec<u8>) -> Option<(String, Vec<u8>)> {
    let find = |buf: &[u8], what: &[u8]| buf.windows(what.len()).position(|w| w == what);
    let mut chunk = [0u8; 4096];
    let mut fill = async |s: &mut TcpStream, buf: &mut Vec<u8>| match s.read(&mut chunk).await {
        Ok(0) | Err(_) => false,
        Ok(n) => {
            buf.extend_from_slice(&chunk[..n]);
            true
        }
    };
    while find(buf, b"\r\n\r\n").is_none() {
        if !fill(s, buf).await {
            return None;
        }
    }
    let end = find(buf, b"\r\n\r\n").unwrap() + 4;
    let head = String::from_utf8(buf.drain(..end).collect()).unwrap().to_ascii_lowercase();
    let length = head.lines().find_map(|l| l.strip_prefix("content-length: ")).map(|n| n.trim().parse().unwrap());
    let end = if let Some(n) = length {
        while buf.len() < n {
            if !fill(s, buf).await {
                return None;
            }
        }
        n
    } else if head.contains("transfer-encoding: chunked") {
        loop {
            if let Some(i) = find(buf, b"0\r\n\r\n") {
                break i + 5;
            }
            if !fill(s, buf).await {
                return None;
            }
        }
    } else {
        0
    };
    Some((head, buf.drain(..end).collect()))
}

const OK: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";

#[tokio::test]
async fn a_chunked_answer_is_decoded_and_its_connection_reused() {
    let server = Server::start(|mut s| async move {
        let mut buf = Vec::new();
        while read_request(&mut s, &mut buf).await.is_some() {
            // In two writes (loopback may merge them; decode.rs's tests cut the body at every byte).
            let _ = s.write_all(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n6;ext=1").await;
            let _ = s.write_all(b"\r\n world\r\n0\r\nx-trailer: dropped\r\n\r\n").await;
        }
    })
    .await;
    for _ in 0..2 {
        let (status, body) = server.call(get("/")).await.expect("request failed");
        assert_eq!((status, &body[..]), (StatusCode::OK, &b"hello world"[..]));
    }
    assert_eq!(server.accepted(), 1, "a chunked answer read to its end leaves the connection reusable");
}

#[tokio::test]
async fn an_answer_trickled_a_byte_at_a_time_is_read_whole() {
    let server = Server::start(|mut s| async move {
        let mut buf = Vec::new();
        while read_request(&mut s, &mut buf).await.is_some() {
            let answer = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nx-a: 1\r\ncontent-length: 2\r\n\r\nok";
            for byte in answer.iter() {
                // Each byte its own segment: the client reads the head across many reads.
                let _ = s.write_all(std::slice::from_ref(byte)).await;
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }
    })
    .await;
    for _ in 0..2 {
        let (status, body) = server.call(get("/")).await.expect("request failed");
        assert_eq!((status, &body[..]), (StatusCode::OK, &b"ok"[..]));
    }
    assert_eq!(server.accepted(), 1);
}

#[tokio::test]
async fn a_close_delimited_answer_is_read_to_the_end_and_its_connection_not_reused() {
    let server = Server::start(|mut s| async move {
        let mut buf = Vec::new();
        if read_request(&mut s, &mut buf).await.is_some() {
            let _ = s.write_all(b"HTTP/1.1 200 OK\r\n\r\nall of ").await;
            let _ = s.write_all(b"it").await;
        }
    })
    .await;
    for _ in 0..2 {
        let (status, body) = server.call(get("/")).await.expect("request failed");
        assert_eq!((status, &body[..]), (StatusCode::OK, &b"all of it"[..]));
        assert_eq!(server.pool.idle_count(), 0);
    }
    assert_eq!(server.accepted(), 2);
}

#[tokio::test]
async fn head_204_and_304_answers_have_no_body() {
    let server = Server::start(|mut s| async move {
        let mut buf = Vec::new();
        while let Some((head, _)) = read_request(&mut s, &mut buf).await {
            let answer: &[u8] = if head.starts_with("head ") {
                b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\n"
            } else if head.starts_with("get /204 ") {
                b"HTTP/1.1 204 No Content\r\n\r\n"
            } else if head.starts_with("get /304 ") {
                b"HTTP/1.1 304 Not Modified\r\ncontent-length: 10\r\n\r\n"
            } else {
                OK
            };
            let _ = s.write_all(answer).await;
        }
    })
    .await;
    let (status, body) = server.call(request(Method::HEAD, "/", full(Bytes::new()))).await.expect("HEAD failed");
    assert_eq!((status, body.len()), (StatusCode::OK, 0));
    let (status, body) = server.call(get("/204")).await.expect("204 failed");
    assert_eq!((status, body.len()), (StatusCode::NO_CONTENT, 0));
    let (status, body) = server.call(get("/304")).await.expect("304 failed");
    assert_eq!((status, body.len()), (StatusCode::NOT_MODIFIED, 0));
    let (status, body) = server.call(get("/")).await.expect("GET failed");
    assert_eq!((status, &body[..]), (StatusCode::OK, &b"ok"[..]));
    assert_eq!(server.accepted(), 1, "bodiless answers leave the connection reusable");
}

#[tokio::test]
async fn an_interim_100_continue_is_skipped() {
    let server = Server::start(|mut s| async move {
        let mut buf = Vec::new();
        while read_request(&mut s, &mut buf).await.is_some() {
            let _ = s.write_all(b"HTTP/1.1 100 Continue\r\n\r\n").await;
            let _ = s.write_all(OK).await;
        }
    })
    .await;
    let body = full(Bytes::from_static(b"payload"));
    let req = request(Method::POST, "/", body);
    let (status, body) = server.call(req).await.expect("request failed");
    assert_eq!((status, &body[..]), (StatusCode::OK, &b"ok"[..]));
}

#[tokio::test]
async fn an_over_long_head_is_refused_with_an_error() {
    let server = Server::start(|mut s| async move {
        let mut buf = Vec::new();
        if let Some((head, _)) = read_request(&mut s, &mut buf).await {
            if head.starts_with("get /many ") {
                let mut answer = b"HTTP/1.1 200 OK\r\n".to_vec();
                // One more than the 100 an answer may have.
                for i in 0..101 {
                    answer.extend_from_slice(format!("x-h{i}: 1\r\n").as_bytes());
                }
                answer.extend_from_slice(b"content-length: 0\r\n\r\n");
                let _ = s.write_all(&answer).await;
                return;
            }
            // A head that never ends: only the client's bound stops it.
            let _ = s.write_all(b"HTTP/1.1 200 OK\r\n").await;
            let line = format!("x-filler: {}\r\n", "a".repeat(1000));
            while s.write_all(line.as_bytes()).await.is_ok() {}
        }
    })
    .await;
    let e = server.call(get("/long")).await.expect_err("an endless head is an error");
    assert!(matches!(e, PoolError::Exchange(super::Error::HeadTooLarge)), "{e:?}");
    let e = server.call(get("/many")).await.expect_err("too many headers is an error");
    assert!(matches!(e, PoolError::Exchange(super::Error::MalformedHead(_))), "{e:?}");
}

#[tokio::test]
async fn an_idle_connection_the_server_closed_is_replaced_by_a_fresh_one() {
    let (closed_tx, mut closed) = tokio::sync::mpsc::unbounded_channel::<()>();
    let server = Server::start(move |mut s| {
        let closed_tx = closed_tx.clone();
        async move {
            let mut buf = Vec::new();
            if read_request(&mut s, &mut buf).await.is_some() {
                let _ = s.write_all(OK).await;
            }
            drop(s);
            let _ = closed_tx.send(());
        }
    })
    .await;
    // POSTs: never sent twice once written, so only seeing the closed connection before use
    // (not a resend after the failure) makes each succeed.
    for _ in 0..3 {
        let post = request(Method::POST, "/", full(Bytes::from_static(b"x")));
        let (status, body) = server.call(post).await.expect("request failed");
        assert_eq!((status, &body[..]), (StatusCode::OK, &b"ok"[..]));
        within(closed.recv()).await.unwrap();
    }
    assert_eq!(server.accepted(), 3);
}

#[tokio::test]
async fn a_request_a_reused_connection_dropped_unanswered_goes_again_only_when_safe() {
    // Each connection answers its first request, then reads the second and closes unanswered.
    let server = Server::start(|mut s| async move {
        let mut buf = Vec::new();
        if read_request(&mut s, &mut buf).await.is_some() {
            let _ = s.write_all(OK).await;
            let _ = read_request(&mut s, &mut buf).await;
        }
    })
    .await;
    let (status, _) = server.call(get("/a")).await.expect("first request failed");
    assert_eq!(status, StatusCode::OK);
    let (status, _) = server.call(get("/b")).await.expect("an idempotent request goes again");
    assert_eq!(status, StatusCode::OK);
    assert_eq!(server.accepted(), 2);
    let body = full(Bytes::from_static(b"once"));
    let e = server.call(request(Method::POST, "/c", body)).await.expect_err("a POST the server may have seen");
    assert!(matches!(e, PoolError::Exchange(super::Error::ClosedBeforeHead)), "{e:?}");
    assert_eq!(server.accepted(), 2, "a POST is not sent twice");
}

#[tokio::test]
async fn a_streaming_request_body_goes_chunked_as_it_comes() {
    let (seen_tx, mut seen) = tokio::sync::mpsc::unbounded_channel::<Vec<u8>>();
    let server = Server::start(move |mut s| {
        let seen_tx = seen_tx.clone();
        async move {
            let mut got = Vec::new();
            let mut chunk = [0u8; 4096];
            // Report every read until the last chunk came, then answer.
            while !got.ends_with(b"0\r\n\r\n") {
                match s.read(&mut chunk).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => {
                        got.extend_from_slice(&chunk[..n]);
                        let _ = seen_tx.send(got.clone());
                    }
                }
            }
            let _ = s.write_all(OK).await;
        }
    })
    .await;
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, BodyError>>(1);
    let body = http_body_util::StreamBody::new(tokio_stream::wrappers::ReceiverStream::new(rx));
    let req = request(Method::POST, "/upload", body.boxed());
    let pool = server.pool.clone();
    let call = tokio::spawn(async move { pool.send(req).await.map(|r| r.status()) });
    tx.send(Ok(Frame::data(Bytes::from_static(b"hello")))).await.unwrap();
    // The first piece reaches the server while the body is still open.
    let mut got = Vec::new();
    while !got.ends_with(b"5\r\nhello\r\n") {
        got = within(seen.recv()).await.unwrap();
    }
    let text = String::from_utf8_lossy(&got).to_ascii_lowercase();
    assert!(text.contains("transfer-encoding: chunked\r\n"), "{text}");
    assert!(!text.contains("content-length"), "{text}");
    tx.send(Ok(Frame::data(Bytes::from_static(b" world")))).await.unwrap();
    drop(tx);
    while !got.ends_with(b"0\r\n\r\n") {
        got = within(seen.recv()).await.unwrap();
    }
    assert!(got.ends_with(b"\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"), "{}", String::from_utf8_lossy(&got));
    assert_eq!(within(call).await.unwrap().expect("request failed"), StatusCode::OK);
}

#[tokio::test]
async fn an_answer_sent_before_the_body_was_taken_is_passed_on() {
    // The server answers 413 on seeing the head and closes without reading the body.
    let server = Server::start(|mut s| async move {
        let mut buf = vec![0u8; 4096];
        let mut got = Vec::new();
        while !got.windows(4).any(|w| w == b"\r\n\r\n") {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
        let _ = s.write_all(b"HTTP/1.1 413 Payload Too Large\r\ncontent-length: 3\r\n\r\nbig").await;
    })
    .await;
    let body = full(Bytes::from(vec![b'x'; 64 << 20]));
    let (status, body) = server.call(request(Method::POST, "/upload", body)).await.expect("the early answer");
    assert_eq!((status, &body[..]), (StatusCode::PAYLOAD_TOO_LARGE, &b"big"[..]));
    assert_eq!(server.pool.idle_count(), 0, "a connection whose request was cut short is not reused");
}

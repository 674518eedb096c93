use super::*;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use std::sync::atomic::{AtomicUsize, Ordering};

fn get(path: &str) -> Request<Body> {
    Request::get(path).header(http::header::HOST, "upstream").body(crate::backend::full(Bytes::new())).unwrap()
}

async fn idle_connections_are_bounded_and_reused(client: Client) {
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
                let _ = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), svc).await;
            });
        }
    });
    let pool = Arc::new(HostPool::new(addr.to_string(), client, Duration::from_secs(5), Duration::from_secs(90), 2));
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
async fn idle_connections_are_bounded_per_endpoint_and_reused() {
    idle_connections_are_bounded_and_reused(Client::Own).await;
    idle_connections_are_bounded_and_reused(Client::Hyper).await;
}

#[tokio::test]
async fn a_refused_connection_is_a_connect_error() {
    // A port held bound but not listening for the whole test: connecting is refused, and no
    // other test can take the port meanwhile.
    let reserved = tokio::net::TcpSocket::new_v4().unwrap();
    reserved.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let dead = reserved.local_addr().unwrap();
    for client in [Client::Own, Client::Hyper] {
        let pool =
            Arc::new(HostPool::new(dead.to_string(), client, Duration::from_secs(5), Duration::from_secs(90), 2));
        let e = pool.send(get("/")).await.expect_err("nothing listens there");
        assert!(matches!(e, PoolError::Connect(_)), "{e:?}");
    }
}

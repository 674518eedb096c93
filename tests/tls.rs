//! TLS on both listeners and to upstreams, with certificates made at test time (rcgen): ALPN h2
//! and http/1.1, certificate reload while connections stay up, client certificates on the
//! admin listener, and https upstreams verified against a configured CA.

mod support;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};
use support::{Gateway, ADMIN_TOKEN};
use tokio::net::{TcpListener, TcpStream};

/// A certificate authority made for one test.
struct Ca {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

impl Ca {
    fn new(name: &str) -> Ca {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(rcgen::DnType::CommonName, name);
        Ca { issuer: CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap() }
    }

    fn pem(&self) -> String {
        self.issuer.pem()
    }

    fn der(&self) -> CertificateDer<'static> {
        self.issuer.der().clone()
    }

    /// A leaf for localhost and 127.0.0.1: (certificate PEM, key PEM, certificate DER).
    fn leaf(&self) -> (String, String, CertificateDer<'static>) {
        let key = KeyPair::generate().unwrap();
        let params = CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()]).unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        (cert.pem(), key.serialize_pem(), cert.der().clone())
    }

    /// Writes a leaf to `<dir>/<name>.pem` and `<dir>/<name>.key`.
    fn write_leaf(&self, dir: &Path, name: &str) -> (PathBuf, PathBuf, CertificateDer<'static>) {
        let (cert, key, der) = self.leaf();
        let (c, k) = (dir.join(format!("{name}.pem")), dir.join(format!("{name}.key")));
        std::fs::write(&c, cert).unwrap();
        std::fs::write(&k, key).unwrap();
        (c, k, der)
    }
}

fn client_config(ca: &Ca, alpn: &[&[u8]], identity: Option<(&str, &str)>) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.der()).unwrap();
    let builder = rustls::ClientConfig::builder_with_provider(modelgate::tls::provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
    let mut config = match identity {
        None => builder.with_no_client_auth(),
        Some((cert, key)) => builder
            .with_client_auth_cert(
                CertificateDer::pem_slice_iter(cert.as_bytes()).collect::<Result<Vec<_>, _>>().unwrap(),
                PrivateKeyDer::from_pem_slice(key.as_bytes()).unwrap(),
            )
            .unwrap(),
    };
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Arc::new(config)
}

/// One TLS connection kept open across requests, over h2 or HTTP/1.1 as ALPN decided.
enum Conn {
    H1(hyper::client::conn::http1::SendRequest<Empty<Bytes>>),
    H2(hyper::client::conn::http2::SendRequest<Empty<Bytes>>),
}

struct TlsConn {
    conn: Conn,
    /// The leaf certificate the server presented.
    server_cert: CertificateDer<'static>,
    authority: String,
}

async fn connect(addr: SocketAddr, config: Arc<rustls::ClientConfig>) -> Result<TlsConn, String> {
    let tcp = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    let tls = tokio_rustls::TlsConnector::from(config)
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    let (_, session) = tls.get_ref();
    let server_cert = session.peer_certificates().unwrap()[0].clone();
    let h2 = session.alpn_protocol() == Some(b"h2");
    let io = TokioIo::new(tls);
    let conn = if h2 {
        let (send, conn) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), io).await.map_err(|e| e.to_string())?;
        tokio::spawn(conn);
        Conn::H2(send)
    } else {
        let (send, conn) = hyper::client::conn::http1::handshake(io).await.map_err(|e| e.to_string())?;
        tokio::spawn(conn);
        Conn::H1(send)
    };
    Ok(TlsConn { conn, server_cert, authority: format!("localhost:{}", addr.port()) })
}

impl TlsConn {
    fn is_h2(&self) -> bool {
        matches!(self.conn, Conn::H2(_))
    }

    async fn get(&mut self, path: &str, token: Option<&str>) -> Result<(StatusCode, Bytes), String> {
        let uri = format!("https://{}{path}", self.authority);
        let mut req = Request::get(uri);
        if let Conn::H1(_) = self.conn {
            req = req.header("host", &self.authority);
        }
        if let Some(t) = token {
            req = req.header("authorization", format!("Bearer {t}"));
        }
        let req = req.body(Empty::new()).unwrap();
        let resp = match &mut self.conn {
            Conn::H1(s) => s.send_request(req).await,
            Conn::H2(s) => s.send_request(req).await,
        }
        .map_err(|e| e.to_string())?;
        let status = resp.status();
        let body = resp.into_body().collect().await.map_err(|e| e.to_string())?.to_bytes();
        Ok((status, body))
    }
}

fn upstream_yaml(upstream: &str) -> String {
    format!(
        "backends:\n  - name: web\n    upstream: {{url: \"{upstream}\"}}\nroutes:\n  - path_prefix: /web/\n    backend: web\n"
    )
}

#[tokio::test]
async fn inference_listener_speaks_h2_and_http1_and_reloads_its_certificate_under_open_connections() {
    let upstream = support::Upstream::start(Duration::ZERO).await;
    let ca = Ca::new("test CA");
    let dir = tempfile::tempdir().unwrap();
    let (cert, key, first) = ca.write_leaf(dir.path(), "server");
    let yaml = format!(
        "server:\n  tls: {{cert: \"{}\", key: \"{}\", reload_interval: 50ms}}\n{}",
        cert.display(),
        key.display(),
        upstream_yaml(&upstream.url())
    );
    let gw = Gateway::start(&yaml).await;

    let mut h2 = connect(gw.addr, client_config(&ca, &[b"h2", b"http/1.1"], None)).await.unwrap();
    let mut h1 = connect(gw.addr, client_config(&ca, &[b"http/1.1"], None)).await.unwrap();
    let mut plain = connect(gw.addr, client_config(&ca, &[], None)).await.unwrap();
    assert!(h2.is_h2() && !h1.is_h2() && !plain.is_h2());
    for c in [&mut h2, &mut h1, &mut plain] {
        assert_eq!(c.server_cert, first);
        let (status, body) = c.get("/web/hello", None).await.unwrap();
        assert_eq!(status, StatusCode::OK, "{body:?}");
        assert_eq!(upstream.last().headers["x-forwarded-proto"], "https", "the TLS listener's scheme is told upstream");
    }
    // A client that does not trust the CA is refused at the handshake.
    let stranger = Ca::new("other CA");
    assert!(connect(gw.addr, client_config(&stranger, &[b"h2"], None)).await.is_err());

    // A new certificate on disk is served to new handshakes; open connections keep working.
    let (_, _, second) = ca.write_leaf(dir.path(), "server");
    assert_ne!(first, second);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let fresh = connect(gw.addr, client_config(&ca, &[b"h2"], None)).await.unwrap();
        if fresh.server_cert == second {
            break;
        }
        assert!(Instant::now() < deadline, "the new certificate was not picked up within 10 s");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for c in [&mut h2, &mut h1, &mut plain] {
        let (status, _) = c.get("/web/after-reload", None).await.expect("the connection stayed up across the reload");
        assert_eq!(status, StatusCode::OK);
    }

    // A broken file is refused: the running certificate stays.
    std::fs::write(&cert, "-----BEGIN CERTIFICATE-----\nnot base64\n").unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let after = connect(gw.addr, client_config(&ca, &[b"h2"], None)).await.unwrap();
    assert_eq!(after.server_cert, second);
    // So is a certificate that does not go with the key.
    let (other_cert, _, _) = ca.leaf();
    std::fs::write(&cert, other_cert).unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut after = connect(gw.addr, client_config(&ca, &[b"h2"], None)).await.unwrap();
    assert_eq!(after.server_cert, second);
    assert_eq!(after.get("/web/still", None).await.unwrap().0, StatusCode::OK);
    gw.shutdown().await;
}

#[tokio::test]
async fn admin_listener_requires_a_client_certificate_from_its_ca() {
    let ca = Ca::new("admin CA");
    let clients = Ca::new("admin clients CA");
    let dir = tempfile::tempdir().unwrap();
    let (cert, key, _) = ca.write_leaf(dir.path(), "admin");
    let client_ca = dir.path().join("clients.pem");
    std::fs::write(&client_ca, clients.pem()).unwrap();
    let upstream = support::Upstream::start(Duration::ZERO).await;
    let yaml = format!(
        "server:\n  admin_tls: {{cert: \"{}\", key: \"{}\", client_ca: \"{}\"}}\n{}",
        cert.display(),
        key.display(),
        client_ca.display(),
        upstream_yaml(&upstream.url())
    );
    let gw = Gateway::start(&yaml).await;

    // No client certificate: refused (during or right after the handshake, as TLS 1.3 allows).
    let refused = match connect(gw.admin, client_config(&ca, &[b"http/1.1"], None)).await {
        Err(_) => true,
        Ok(mut c) => c.get("/admin/routes", Some(ADMIN_TOKEN)).await.is_err(),
    };
    assert!(refused, "an admin client without a certificate was served");

    // A certificate from another CA: refused.
    let (s_cert, s_key, _) = Ca::new("stranger").leaf();
    let refused = match connect(gw.admin, client_config(&ca, &[b"http/1.1"], Some((&s_cert, &s_key)))).await {
        Err(_) => true,
        Ok(mut c) => c.get("/admin/routes", Some(ADMIN_TOKEN)).await.is_err(),
    };
    assert!(refused, "an admin client with a stranger's certificate was served");

    // A certificate from the clients' CA: served, over h2 too.
    let (c_cert, c_key, _) = clients.leaf();
    for alpn in [&b"http/1.1"[..], &b"h2"[..]] {
        let mut c = connect(gw.admin, client_config(&ca, &[alpn], Some((&c_cert, &c_key)))).await.unwrap();
        let (status, body) = c.get("/admin/routes", Some(ADMIN_TOKEN)).await.unwrap();
        assert_eq!(status, StatusCode::OK, "{body:?}");
        assert!(String::from_utf8_lossy(&body).contains("/web/"));
    }
    // The inference listener is still plain HTTP.
    assert_eq!(support::get(&gw.url("/web/x")).await.status, StatusCode::OK);
    gw.shutdown().await;
}

/// An https upstream on 127.0.0.1:0 with a certificate from `ca`, answering 200 "secure" over
/// h2 or HTTP/1.1 as ALPN decides.
async fn https_upstream(ca: &Ca) -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let (cert, key, _) = ca.leaf();
    let mut config = rustls::ServerConfig::builder_with_provider(modelgate::tls::provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            CertificateDer::pem_slice_iter(cert.as_bytes()).collect::<Result<Vec<_>, _>>().unwrap(),
            PrivateKeyDer::from_pem_slice(key.as_bytes()).unwrap(),
        )
        .unwrap();
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else { return };
                let svc = hyper::service::service_fn(|req: Request<Incoming>| async move {
                    let text = format!("secure {:?} {}", req.version(), req.uri().path());
                    Ok::<_, Infallible>(hyper::Response::new(Full::new(Bytes::from(text))))
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(tls), svc)
                    .await;
            });
        }
    });
    (addr, task)
}

#[tokio::test]
async fn https_upstreams_are_verified_against_the_configured_ca() {
    let ca = Ca::new("upstream CA");
    let (addr, _task) = https_upstream(&ca).await;
    let dir = tempfile::tempdir().unwrap();
    let trusted = dir.path().join("ca.pem");
    std::fs::write(&trusted, ca.pem()).unwrap();
    let untrusted = dir.path().join("other.pem");
    std::fs::write(&untrusted, Ca::new("other").pem()).unwrap();
    let yaml = format!(
        r#"backends:
  - name: good
    upstream: {{url: "https://localhost:{port}", ca: "{trusted}"}}
  - name: bad
    upstream: {{url: "https://localhost:{port}", ca: "{untrusted}"}}
routes:
  - path_prefix: /good/
    backend: good
  - path_prefix: /bad/
    backend: bad
"#,
        port = addr.port(),
        trusted = trusted.display(),
        untrusted = untrusted.display()
    );
    let gw = Gateway::start(&yaml).await;
    for i in 0..3 {
        let good = support::get(&gw.url(&format!("/good/model/{i}"))).await;
        assert_eq!(good.status, StatusCode::OK, "{:?}", good.body);
        let text = String::from_utf8_lossy(&good.body).to_string();
        assert!(text.starts_with("secure HTTP/2.0 /good/model/"), "{text}");
    }
    let bad = support::get(&gw.url("/bad/model")).await;
    assert_eq!(bad.status, StatusCode::BAD_GATEWAY);
    assert!(bad.error().contains("certificate"), "{}", bad.error());
    gw.shutdown().await;
}

#[tokio::test]
async fn the_grpc_listener_serves_tls_with_the_inference_certificate() {
    use modelgate::protocol::grpc::pb::grpc_inference_service_client::GrpcInferenceServiceClient;
    use modelgate::protocol::grpc::pb::{ModelReadyRequest, ServerLiveRequest};
    let ca = Ca::new("test CA");
    let dir = tempfile::tempdir().unwrap();
    let (cert, key, _) = ca.write_leaf(dir.path(), "server");
    let yaml = format!(
        "server:\n  tls: {{cert: \"{}\", key: \"{}\"}}\n  grpc_listen: \"127.0.0.1:0\"\nbackends:\n  - name: m\n    onnx: {{path: \"{}\"}}\nroutes:\n  - model: m\n    backend: m\n",
        cert.display(),
        key.display(),
        support::model("diabetes-v1.onnx"),
    );
    let gw = Gateway::start(&yaml).await;
    let grpc = gw.grpc.unwrap();
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(Arc::unwrap_or_clone(client_config(&ca, &[], None)))
        .https_only()
        .enable_http2()
        .build();
    let pool = hyper_util::client::legacy::Client::builder(TokioExecutor::new()).http2_only(true).build(https);
    let origin = format!("https://localhost:{}", grpc.port()).parse().unwrap();
    let mut client = GrpcInferenceServiceClient::with_origin(pool, origin);
    assert!(client.server_live(ServerLiveRequest {}).await.unwrap().into_inner().live);
    let ready = ModelReadyRequest { name: "m".into(), version: String::new() };
    assert!(client.model_ready(ready).await.unwrap().into_inner().ready);
}

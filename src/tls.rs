//! TLS through rustls (ring provider): listener configs whose certificate is re-read from disk
//! while serving, optional client-certificate (mTLS) verification, and the roots the upstream
//! client trusts.
//!
//! A listener's certificate is behind an [`ArcSwap`]: [`ReloadingCert::reload_if_changed`]
//! builds the new key pair completely before swapping it in, so a half-written or mismatched
//! pair is refused and the running certificate stays. Handshakes already done keep their
//! connection; new handshakes get the new certificate.

use crate::config::TlsSettings;
use arc_swap::ArcSwap;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Why TLS could not be set up; names the file and what to do.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read or parsed.
    #[error("{path}: {reason}")]
    File {
        /// The file.
        path: PathBuf,
        /// What was wrong with it.
        reason: String,
    },
    /// rustls refused the configuration.
    #[error("TLS setup failed: {0}")]
    Setup(String),
}

fn file_error(path: &Path, reason: impl std::fmt::Display) -> TlsError {
    TlsError::File { path: path.to_path_buf(), reason: reason.to_string() }
}

/// The process's one crypto provider: ring.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Reads every certificate of a PEM file (at least one).
pub fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = std::fs::read(path).map_err(|e| file_error(path, format!("cannot read: {e}")))?;
    certs_from_pem(path, &pem)
}

fn certs_from_pem(path: &Path, pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| file_error(path, format!("not a PEM certificate file: {e}")))?;
    if certs.is_empty() {
        return Err(file_error(path, "holds no CERTIFICATE block; give the PEM certificate chain, leaf first"));
    }
    Ok(certs)
}

fn key_from_pem(path: &Path, pem: &[u8]) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_slice(pem)
        .map_err(|e| file_error(path, format!("no usable private key ({e}); give a PEM PKCS#8, PKCS#1 or SEC1 key")))
}

/// A server certificate re-read from its files when they change.
#[derive(Debug)]
pub struct ReloadingCert {
    cert_path: PathBuf,
    key_path: PathBuf,
    current: ArcSwap<CertifiedKey>,
    /// The file contents the current certificate was built from.
    seen: Mutex<(Vec<u8>, Vec<u8>)>,
}

impl ReloadingCert {
    /// Loads the pair; fails when either file is unreadable or they do not belong together.
    pub fn load(cert_path: &Path, key_path: &Path) -> Result<Arc<ReloadingCert>, TlsError> {
        let (cert_pem, key_pem) = read_pair(cert_path, key_path)?;
        let key = certified_key(cert_path, key_path, &cert_pem, &key_pem)?;
        Ok(Arc::new(ReloadingCert {
            cert_path: cert_path.to_path_buf(),
            key_path: key_path.to_path_buf(),
            current: ArcSwap::from_pointee(key),
            seen: Mutex::new((cert_pem, key_pem)),
        }))
    }

    /// Re-reads the files; when they changed and form a valid pair, serves the new certificate
    /// from the next handshake on. `Ok(true)` when it was swapped; an error leaves the running
    /// certificate in place.
    pub fn reload_if_changed(&self) -> Result<bool, TlsError> {
        let (cert_pem, key_pem) = read_pair(&self.cert_path, &self.key_path)?;
        let mut seen = self.seen.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if seen.0 == cert_pem && seen.1 == key_pem {
            return Ok(false);
        }
        let key = certified_key(&self.cert_path, &self.key_path, &cert_pem, &key_pem)?;
        self.current.store(Arc::new(key));
        *seen = (cert_pem, key_pem);
        Ok(true)
    }

    /// Checks the files every `every` (reading them off the async threads) for as long as the
    /// certificate is served, logging swaps and refusals.
    fn spawn_reloader(self: &Arc<Self>, listener: &'static str, every: Duration) {
        let cert = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.tick().await;
            loop {
                tick.tick().await;
                let Some(cert) = cert.upgrade() else { return };
                let (cert, reloaded) = match tokio::task::spawn_blocking(move || {
                    let reloaded = cert.reload_if_changed();
                    (cert, reloaded)
                })
                .await
                {
                    Ok(done) => done,
                    Err(_) => return,
                };
                match reloaded {
                    Ok(true) => tracing::info!(listener, cert = %cert.cert_path.display(), "TLS certificate reloaded"),
                    Ok(false) => {}
                    Err(e) => tracing::warn!(
                        listener,
                        error = %e,
                        "TLS certificate not reloaded; still serving the previous one"
                    ),
                }
            }
        });
    }
}

fn read_pair(cert_path: &Path, key_path: &Path) -> Result<(Vec<u8>, Vec<u8>), TlsError> {
    let cert = std::fs::read(cert_path).map_err(|e| file_error(cert_path, format!("cannot read: {e}")))?;
    let key = std::fs::read(key_path).map_err(|e| file_error(key_path, format!("cannot read: {e}")))?;
    Ok((cert, key))
}

fn certified_key(cert_path: &Path, key_path: &Path, cert_pem: &[u8], key_pem: &[u8]) -> Result<CertifiedKey, TlsError> {
    let chain = certs_from_pem(cert_path, cert_pem)?;
    let key = key_from_pem(key_path, key_pem)?;
    CertifiedKey::from_der(chain, key, &provider())
        .map_err(|e| file_error(key_path, format!("does not go with the certificate in {} ({e})", cert_path.display())))
}

impl ResolvesServerCert for ReloadingCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.load_full())
    }
}

/// A listener's TLS (ALPN h2 and http/1.1), its certificate re-read every
/// `tls.reload_interval` while the config is in use. Call it inside the runtime.
pub fn listener_config(tls: &TlsSettings, listener: &'static str) -> Result<Arc<ServerConfig>, TlsError> {
    let (config, cert) = build_server_config(tls)?;
    cert.spawn_reloader(listener, tls.reload_interval);
    Ok(config)
}

/// A listener's TLS without the reloading: checks that the files make a usable config.
pub fn server_config(tls: &TlsSettings) -> Result<Arc<ServerConfig>, TlsError> {
    build_server_config(tls).map(|(config, _)| config)
}

fn build_server_config(tls: &TlsSettings) -> Result<(Arc<ServerConfig>, Arc<ReloadingCert>), TlsError> {
    let cert = ReloadingCert::load(&tls.cert, &tls.key)?;
    let builder = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Setup(e.to_string()))?;
    let builder = match &tls.client_ca {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let roots = roots_from(ca)?;
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
                .build()
                .map_err(|e| file_error(ca, format!("cannot verify client certificates with it: {e}")))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder.with_cert_resolver(cert.clone());
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok((Arc::new(config), cert))
}

fn roots_from(path: &Path) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    for cert in read_certs(path)? {
        roots.add(cert).map_err(|e| file_error(path, format!("not a usable CA certificate: {e}")))?;
    }
    Ok(roots)
}

/// The upstream client's TLS: the CAs in `ca` when given, else the system's roots.
pub fn client_config(ca: Option<&Path>) -> Result<ClientConfig, TlsError> {
    client_identity_config(ca, None)
}

/// A client's TLS, presenting the certificate and key in `identity` when given (mutual TLS).
pub fn client_identity_config(ca: Option<&Path>, identity: Option<(&Path, &Path)>) -> Result<ClientConfig, TlsError> {
    let roots = match ca {
        Some(path) => roots_from(path)?,
        None => {
            let found = rustls_native_certs::load_native_certs();
            for e in &found.errors {
                tracing::warn!(error = %e, "some system CA certificates could not be read");
            }
            let mut roots = RootCertStore::empty();
            let (added, _ignored) = roots.add_parsable_certificates(found.certs);
            if added == 0 {
                tracing::warn!("no system CA certificates found: https upstreams need `ca:` in their backend");
            }
            roots
        }
    };
    client_config_from(roots, identity)
}

/// A client config trusting nothing: for connectors whose endpoints are all plain http.
pub fn client_config_without_roots() -> Result<ClientConfig, TlsError> {
    client_config_from(RootCertStore::empty(), None)
}

fn client_config_from(roots: RootCertStore, identity: Option<(&Path, &Path)>) -> Result<ClientConfig, TlsError> {
    let builder = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Setup(e.to_string()))?
        .with_root_certificates(roots);
    // ALPN (h2, http/1.1) is set by the connector.
    match identity {
        None => Ok(builder.with_no_client_auth()),
        Some((cert, key)) => {
            let (cert_pem, key_pem) = read_pair(cert, key)?;
            let chain = certs_from_pem(cert, &cert_pem)?;
            builder
                .with_client_auth_cert(chain, key_from_pem(key, &key_pem)?)
                .map_err(|e| file_error(key, format!("does not go with the certificate in {} ({e})", cert.display())))
        }
    }
}

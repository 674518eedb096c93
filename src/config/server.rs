//! `server:` and `webhooks:` of routes.yaml: listeners, limits, timeouts, TLS, who may pin, whom to
//! trust, and where rollout events go.

use super::*;

/// A webhook: rollout events POSTed as JSON, signed, retried with backoff.
#[derive(Clone, PartialEq)]
#[non_exhaustive]
pub struct WebhookSpec {
    /// Where to POST (http).
    pub url: Uri,
    /// HMAC-SHA256 key for `x-modelgate-signature` (from the environment variable named).
    pub secret: Option<Vec<u8>>,
    /// Event kinds to send; all when `None`.
    pub events: Option<Vec<String>>,
    /// Deadline of one attempt.
    pub timeout: Duration,
    /// Attempts after the first.
    pub retries: u32,
    /// The body's shape: the event as JSON, or a CloudEvent.
    pub format: WebhookFormat,
    /// A JSON body with placeholders (`{{event}}`, `{{kind}}`, ...) wrapped around the event.
    pub template: Option<String>,
    /// Extra request headers (an orchestrator's `Authorization`, say), their values read from
    /// the environment variables named in `header_env` so that secrets stay out of the file.
    pub headers: Vec<(http::HeaderName, http::HeaderValue)>,
}

/// `webhooks[i].format:` — what a webhook's body is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum WebhookFormat {
    /// The event object (`{seq, at_ms, route, kind, message, details}`), `application/json`.
    #[default]
    Json,
    /// CloudEvents 1.0 structured mode, `application/cloudevents+json`.
    CloudEvents,
}

impl std::fmt::Debug for WebhookSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the secret.
        f.debug_struct("WebhookSpec")
            .field("url", &self.url)
            .field("signed", &self.secret.is_some())
            .finish_non_exhaustive()
    }
}

/// `server:` after validation, with defaults filled in.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct ServerSettings {
    /// Address of the inference listener.
    pub listen: SocketAddr,
    /// Address of the admin listener (loopback by default).
    pub admin_listen: SocketAddr,
    /// Address of the Open Inference Protocol gRPC listener; none when unset.
    pub grpc_listen: Option<SocketAddr>,
    /// Largest request body accepted; larger ones get 413.
    pub max_body_bytes: usize,
    /// Client connections each inference listener (HTTP, gRPC) holds at once; beyond it new
    /// connections are closed as soon as they are accepted.
    pub max_connections: usize,
    /// How long a client may take to send the request head.
    pub header_read_timeout: Duration,
    /// How long a kept-alive HTTP/1 connection may wait for its next request before it is
    /// closed (longer than the idle timeout of the clients and load balancers in front).
    pub keepalive_timeout: Duration,
    /// Deadline for a whole request, inference or forwarding included.
    pub request_timeout: Duration,
    /// How long in-flight requests may run on after SIGTERM/SIGINT.
    pub shutdown_grace: Duration,
    /// After SIGTERM, how long readiness answers "not ready" while the listeners keep serving,
    /// before they stop accepting: time for a load balancer to stop sending.
    pub drain_delay: Duration,
    /// How long after an answer feedback on it is accepted.
    pub feedback_max_age: Duration,
    /// Where rollout status is persisted (relative paths: against the config file's folder).
    pub state_dir: PathBuf,
    /// ONNX Runtime shared library, when the file names one.
    pub ort_library: Option<PathBuf>,
    /// TLS on the inference listener.
    pub tls: Option<TlsSettings>,
    /// TLS on the admin listener (with `client_ca`: mutual TLS).
    pub admin_tls: Option<TlsSettings>,
    /// Who may pin a variant (version path, override header) on routes that do not say.
    pub overrides: OverridePolicy,
    /// Serve without `MODELGATE_FEEDBACK_KEY`: request ids unsigned, so anyone can forge
    /// feedback. For demos only.
    pub insecure_unsigned_feedback: bool,
    /// Clients whose `X-Forwarded-*` and `Forwarded` headers are believed (load balancers in
    /// front of the gateway); from anyone else those headers are dropped and made afresh.
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// The operator console (`/ui/` and `/admin/series`, and the sampler behind them); read at
    /// start. Off, the gateway does no per-second sampling at all.
    pub console: bool,
}

/// Who may pin a request to a variant (a version path, or the `x-modelgate-variant` header).
/// Pinned requests are counted apart and never judge an experiment, but they reach variants
/// that have no share of traffic (a blue-green preview, a rolled-back canary, a stopped arm).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum OverridePolicy {
    /// Any client.
    Allow,
    /// Nobody: pins are refused with 403.
    Deny,
    /// Only callers that carry the admin token (`Authorization: Bearer <token>`, or any caller
    /// when the gateway runs without one). The default: smoke tests and QA can reach a preview,
    /// while ordinary clients cannot route themselves onto an unreleased model.
    #[default]
    AdminToken,
}

/// A listener's TLS files (relative paths: against the config file's folder).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsSettings {
    /// PEM certificate chain, leaf first.
    pub cert: PathBuf,
    /// PEM private key of the leaf.
    pub key: PathBuf,
    /// When set, clients must present a certificate chaining to a CA in this PEM file.
    pub client_ca: Option<PathBuf>,
    /// How often the files are checked for a new certificate.
    pub reload_interval: Duration,
}

impl Default for ServerSettings {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            admin_listen: SocketAddr::from(([127, 0, 0, 1], 9090)),
            grpc_listen: None,
            max_body_bytes: 4 * 1024 * 1024,
            max_connections: 10_000,
            header_read_timeout: Duration::from_secs(10),
            // nginx's: longer than the idle timeouts of common load balancers (60 s), so that
            // they, not the gateway, close an idle connection and never send on a closing one.
            keepalive_timeout: Duration::from_secs(75),
            request_timeout: Duration::from_secs(30),
            shutdown_grace: Duration::from_secs(30),
            drain_delay: Duration::ZERO,
            feedback_max_age: Duration::from_secs(24 * 3600),
            state_dir: PathBuf::from("state"),
            ort_library: None,
            tls: None,
            admin_tls: None,
            overrides: OverridePolicy::default(),
            insecure_unsigned_feedback: false,
            trusted_proxies: Vec::new(),
            console: true,
        }
    }
}

pub(super) fn server(raw: &RawServer, base: &Path, issues: &mut Issues) -> ServerSettings {
    let d = ServerSettings::default();
    let parsed = |text: &str, place: &str, issues: &mut Issues| {
        text.parse::<SocketAddr>()
            .inspect_err(|e| {
                issues.push(place, format!("invalid address {text:?} ({e}); write it like \"127.0.0.1:8080\""))
            })
            .ok()
    };
    let address = |value: &Option<String>, default: SocketAddr, place: &str, issues: &mut Issues| match value {
        None => default,
        Some(text) => parsed(text, place, issues).unwrap_or(default),
    };
    let listen = address(&raw.listen, d.listen, "server.listen", issues);
    let admin_listen = address(&raw.admin_listen, d.admin_listen, "server.admin_listen", issues);
    let grpc_listen = raw.grpc_listen.as_deref().and_then(|text| parsed(text, "server.grpc_listen", issues));
    for (other, place) in [(listen, "server.listen"), (admin_listen, "server.admin_listen")] {
        if grpc_listen.is_some_and(|g| g == other && g.port() != 0) {
            issues.push(
                "server.grpc_listen",
                format!("{other} is also {place}: give the gRPC listener a port of its own"),
            );
        }
    }
    let max_body_bytes = match raw.max_body_bytes {
        None => d.max_body_bytes,
        Some(0) => {
            issues.push("server.max_body_bytes", "must be at least 1");
            d.max_body_bytes
        }
        Some(n) => usize::try_from(n).unwrap_or(usize::MAX),
    };
    ServerSettings {
        listen,
        admin_listen,
        grpc_listen,
        max_body_bytes,
        max_connections: super::count(
            raw.max_connections,
            d.max_connections,
            1_000_000,
            "server.max_connections",
            issues,
        ),
        header_read_timeout: duration(
            &raw.header_read_timeout,
            d.header_read_timeout,
            "server.header_read_timeout",
            issues,
        ),
        keepalive_timeout: duration(&raw.keepalive_timeout, d.keepalive_timeout, "server.keepalive_timeout", issues),
        request_timeout: duration(&raw.request_timeout, d.request_timeout, "server.request_timeout", issues),
        shutdown_grace: duration(&raw.shutdown_grace, d.shutdown_grace, "server.shutdown_grace", issues),
        drain_delay: duration(&raw.drain_delay, d.drain_delay, "server.drain_delay", issues),
        feedback_max_age: duration(&raw.feedback_max_age, d.feedback_max_age, "server.feedback_max_age", issues),
        state_dir: base.join(raw.state_dir.as_deref().map_or(d.state_dir.as_path(), Path::new)),
        ort_library: raw.ort_library.as_ref().map(PathBuf::from),
        tls: raw.tls.as_ref().and_then(|t| tls(t, base, "server.tls", issues)),
        admin_tls: raw.admin_tls.as_ref().and_then(|t| tls(t, base, "server.admin_tls", issues)),
        overrides: raw.overrides.as_deref().and_then(|o| overrides(o, "server.overrides", issues)).unwrap_or_default(),
        insecure_unsigned_feedback: raw.insecure_unsigned_feedback.unwrap_or(false),
        trusted_proxies: trusted_proxies(raw.trusted_proxies.as_deref().unwrap_or_default(), issues),
        console: raw.console.unwrap_or(d.console),
    }
}

pub(super) fn trusted_proxies(raw: &[String], issues: &mut Issues) -> Vec<ipnet::IpNet> {
    raw.iter()
        .enumerate()
        .filter_map(|(i, text)| {
            let parsed =
                text.parse::<ipnet::IpNet>().or_else(|_| text.parse::<std::net::IpAddr>().map(ipnet::IpNet::from));
            parsed
                .map_err(|_| {
                    issues.push(
                        format!("server.trusted_proxies[{i}]"),
                        format!(
                            "{text:?} is not an address or a network; write it like \"10.0.0.0/8\" or \"127.0.0.1\""
                        ),
                    )
                })
                .ok()
        })
        .collect()
}

pub(super) fn overrides(text: &str, place: &str, issues: &mut Issues) -> Option<OverridePolicy> {
    match text {
        "allow" => Some(OverridePolicy::Allow),
        "deny" => Some(OverridePolicy::Deny),
        "admin_token" => Some(OverridePolicy::AdminToken),
        other => {
            issues.push(place, format!("{other:?} is not a policy: allow, deny or admin_token"));
            None
        }
    }
}

pub(super) fn tls(raw: &raw::RawTls, base: &Path, place: &str, issues: &mut Issues) -> Option<TlsSettings> {
    let cert = readable_file(base, &raw.cert, &format!("{place}.cert"), "certificate file", issues);
    let key = readable_file(base, &raw.key, &format!("{place}.key"), "key file", issues);
    let client_ca = match &raw.client_ca {
        None => Some(None),
        Some(ca) => readable_file(base, ca, &format!("{place}.client_ca"), "CA file", issues).map(Some),
    };
    let reload_interval =
        duration(&raw.reload_interval, Duration::from_secs(10), &format!("{place}.reload_interval"), issues);
    Some(TlsSettings { cert: cert?, key: key?, client_ca: client_ca?, reload_interval })
}

pub(super) fn webhooks(raw: &[raw::RawWebhook], issues: &mut Issues) -> Vec<WebhookSpec> {
    raw.iter()
        .enumerate()
        .filter_map(|(i, w)| {
            let place = format!("webhooks[{i}]");
            let url = match w.url.parse::<Uri>() {
                Ok(u) if u.scheme_str() == Some("http") && u.authority().is_some() => Some(u),
                _ => {
                    issues.push(
                        format!("{place}.url"),
                        format!("invalid webhook URL {:?}: write it like \"http://host:port/path\"", w.url),
                    );
                    None
                }
            };
            let secret = w.secret_env.as_ref().and_then(|var| match std::env::var(var) {
                Ok(v) if !v.is_empty() => Some(v.into_bytes()),
                _ => {
                    issues.push(format!("{place}.secret_env"), format!("environment variable {var} is not set"));
                    None
                }
            });
            let timeout = duration(&w.timeout, Duration::from_secs(5), &format!("{place}.timeout"), issues);
            let format = match w.format.as_deref() {
                None | Some("json") => WebhookFormat::Json,
                Some("cloudevents") => WebhookFormat::CloudEvents,
                Some(other) => {
                    issues.push(
                        format!("{place}.format"),
                        format!("unknown format {other:?}: use `json` or `cloudevents`"),
                    );
                    WebhookFormat::Json
                }
            };
            if let Some(t) = &w.template {
                use crate::protocol::cloudevents::{render, sample};
                if let Err(e) = serde_json::from_str::<serde_json::Value>(&render(t, &sample(), &sample())) {
                    issues.push(
                        format!("{place}.template"),
                        format!(
                            "is not JSON once its placeholders are filled in ({e}); placeholders are JSON values \
                                 (`{{{{kind}}}}` becomes \"drift_detected\" with its quotes): write them unquoted"
                        ),
                    );
                }
            }
            let mut headers = Vec::new();
            for (name, var) in w.header_env.iter().flatten() {
                let hplace = format!("{place}.header_env.{name}");
                let Ok(header) = http::HeaderName::from_bytes(name.as_bytes()) else {
                    issues.push(hplace, format!("{name:?} is not a valid header name"));
                    continue;
                };
                match std::env::var(var).ok().filter(|v| !v.is_empty()).map(|v| http::HeaderValue::from_str(&v)) {
                    Some(Ok(mut value)) => {
                        value.set_sensitive(true);
                        headers.push((header, value));
                    }
                    Some(Err(_)) => {
                        issues.push(hplace, format!("environment variable {var} is not a valid header value"))
                    }
                    None => issues.push(hplace, format!("environment variable {var} is not set")),
                }
            }
            url.map(|url| WebhookSpec {
                url,
                secret,
                events: w.events.clone(),
                timeout,
                retries: w.retries.unwrap_or(5).min(20),
                format,
                template: w.template.clone(),
                headers,
            })
        })
        .collect()
}

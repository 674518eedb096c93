//! The admin API from the command line: `modelgate status | promote | rollback | pause |
//! resume | weight`, for people (tables) and pipelines (`--json`).

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;
use std::fmt::Write as _;
use std::path::PathBuf;

/// Why a CLI call failed; the message says what to do next.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The admin API could not be reached.
    #[error("cannot reach the admin API at {url}: {reason} (is `modelgate serve` running? set --admin-url or MODELGATE_ADMIN_URL)")]
    Unreachable {
        /// Where it was looked for.
        url: String,
        /// The connection error.
        reason: String,
    },
    /// The admin API refused.
    #[error("{status}: {message}")]
    Refused {
        /// HTTP status.
        status: StatusCode,
        /// The API's `error`.
        message: String,
    },
    /// Anything else.
    #[error("{0}")]
    Other(String),
}

/// How to reach an admin listener that serves TLS.
#[derive(Debug, Clone, Default)]
pub struct ClientTls {
    /// CAs to trust (PEM); the system's roots when unset.
    pub ca: Option<PathBuf>,
    /// Client certificate and key (PEM), for an admin listener that requires one.
    pub identity: Option<(PathBuf, PathBuf)>,
}

/// Calls the admin API at `base` (like `http://127.0.0.1:9090` or `https://gw:9443`).
pub async fn call(
    base: &str,
    method: Method,
    path: &str,
    body: Option<Value>,
    token: Option<&str>,
    tls: &ClientTls,
) -> Result<Value, ClientError> {
    let url = format!("{}{path}", base.trim_end_matches('/'));
    let mut req = Request::builder().method(method).uri(&url).header("content-type", "application/json");
    if let Some(t) = token {
        req = req.header("authorization", format!("Bearer {t}"));
    }
    let body = body.map(|b| Bytes::from(b.to_string())).unwrap_or_default();
    let req = req.body(Full::new(body)).map_err(|e| ClientError::Other(format!("bad admin URL {url:?}: {e}")))?;
    let connector = if base.starts_with("https://") {
        let identity = tls.identity.as_ref().map(|(c, k)| (c.as_path(), k.as_path()));
        let config = crate::tls::client_identity_config(tls.ca.as_deref(), identity)
            .map_err(|e| ClientError::Other(format!("cannot set up TLS to the admin API: {e}")))?;
        hyper_rustls::HttpsConnectorBuilder::new().with_tls_config(config).https_only()
    } else {
        let config = crate::tls::client_config_without_roots().map_err(|e| ClientError::Other(e.to_string()))?;
        hyper_rustls::HttpsConnectorBuilder::new().with_tls_config(config).https_or_http()
    }
    .enable_http1()
    .build();
    let client = Client::builder(TokioExecutor::new()).build::<_, Full<Bytes>>(connector);
    let resp = client.request(req).await.map_err(|e| {
        let mut reason = e.to_string();
        let mut src = std::error::Error::source(&e);
        while let Some(s) = src {
            reason = s.to_string();
            src = s.source();
        }
        ClientError::Unreachable { url: base.to_string(), reason }
    })?;
    let status = resp.status();
    let bytes = resp.into_body().collect().await.map_err(|e| ClientError::Other(e.to_string()))?.to_bytes();
    let value: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    if status.is_success() {
        Ok(value)
    } else {
        let message =
            value["error"].as_str().map(str::to_string).unwrap_or_else(|| String::from_utf8_lossy(&bytes).into_owned());
        Err(ClientError::Refused { status, message })
    }
}

/// The admin path of a route's action; path prefixes are percent-encoded.
pub fn action_path(route: &str, action: &str) -> String {
    let encoded: String = route
        .bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect();
    format!("/admin/routes/{encoded}/{action}")
}

/// `GET /admin/routes` as a table for people.
pub fn status_table(view: &Value) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "generation {}", view["generation"]);
    let _ = writeln!(out, "{:<24} {:<11} {:<12} {:<6} VARIANTS", "ROUTE", "STRATEGY", "PHASE", "STEP");
    for r in view["routes"].as_array().into_iter().flatten() {
        let variants: Vec<String> = r["variants"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|v| {
                let w = v["weight"].as_f64().unwrap_or(0.0);
                let w = if w.fract() == 0.0 { format!("{w:.0}") } else { format!("{w:.2}") };
                format!("{} {} {w}%", v["name"].as_str().unwrap_or("?"), v["role"].as_str().unwrap_or("?"))
            })
            .collect();
        let step = match &r["status"]["progress"] {
            Value::Null => "-".to_string(),
            p => format!("{}{}", p["step"], if p["paused"] == true { " (paused)" } else { "" }),
        };
        let phase =
            if r["unavailable"].is_null() { r["status"]["phase"].as_str().unwrap_or("-") } else { "unavailable" };
        let _ = writeln!(
            out,
            "{:<24} {:<11} {:<12} {:<6} {}",
            r["name"].as_str().unwrap_or("?"),
            r["strategy"].as_str().unwrap_or("?"),
            phase,
            step,
            variants.join(", ")
        );
    }
    if view["reload"]["ok"] == false {
        let _ = writeln!(out, "last reload REFUSED: {}", view["reload"]["errors"]);
    }
    out
}

/// `GET /admin/cluster` as a table for people.
pub fn cluster_table(view: &Value) -> String {
    let mut out = String::new();
    let leader = view["leader"].as_str().unwrap_or("none");
    let _ = writeln!(out, "replica {} · leader {leader}", view["replica"].as_str().unwrap_or("?"));
    if let Some(why) = view["decisions_held"].as_str() {
        let _ = writeln!(out, "decisions held here: {why}");
    }
    if view["mixed_revisions"] == true {
        let _ = writeln!(out, "MIXED spec revisions across the replicas (a routes.yaml change on its way)");
    }
    let _ = writeln!(out, "{:<24} {:<7} {:<10} {:>12}", "REPLICA", "LEADER", "REVISIONS", "PUBLISHED");
    for r in view["replicas"].as_array().into_iter().flatten() {
        let id = r["replica"].as_str().unwrap_or("?");
        let same = if r["same_revisions"] == true { "same" } else { "DIFFERENT" };
        let age = r["last_publish_age_ms"].as_u64().map_or("never".to_string(), |ms| format!("{ms} ms ago"));
        let _ = writeln!(out, "{id:<24} {:<7} {same:<10} {age:>12}", if id == leader { "*" } else { "" });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cluster_table_names_the_leader_and_mixed_revisions() {
        let view = serde_json::json!({
            "replica": "gw-1", "leader": "gw-2", "decisions_held": "not the leader (leader: gw-2)",
            "mixed_revisions": true,
            "replicas": [
                {"replica": "gw-1", "same_revisions": true, "last_publish_age_ms": 120},
                {"replica": "gw-2", "same_revisions": false, "last_publish_age_ms": null},
            ],
        });
        let table = cluster_table(&view);
        assert!(table.contains("leader gw-2") && table.contains("decisions held here: not the leader"), "{table}");
        assert!(table.contains("MIXED"), "{table}");
        let gw2 = table.lines().find(|l| l.starts_with("gw-2")).unwrap();
        assert!(gw2.contains('*') && gw2.contains("DIFFERENT") && gw2.contains("never"), "{table}");
    }
}

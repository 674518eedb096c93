//! MLflow's REST API, the few calls a model source needs: the version an alias names
//! (`registered-models/alias`), where its artifacts are (`model-versions/get-download-uri`),
//! and the artifacts themselves through the tracking server's artifact proxy
//! (`/api/2.0/mlflow-artifacts/artifacts/<path>`, a server started with artifact serving, the
//! default since MLflow 2). Every answer is read with a size bound.

use crate::config::RegistrySpec;
use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Empty, LengthLimitError, Limited};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;
use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use serde::Deserialize;
use std::time::Duration;

/// Largest JSON answer or MLmodel file read from the registry.
const MAX_META_BYTES: u64 = 1 << 20;
/// How long one call may take to its last byte (an artifact too).
const CALL_TIMEOUT: Duration = Duration::from_secs(60);

/// Characters left as they are in a query value or a path segment.
const KEEP: &AsciiSet = &NON_ALPHANUMERIC.remove(b'-').remove(b'_').remove(b'.').remove(b'~');

/// A failed call: the URL and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{url}: {reason}")]
pub struct RegistryError {
    /// The URL that failed.
    pub url: String,
    /// What went wrong.
    pub reason: String,
}

/// A model version as the registry describes it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct ModelVersion {
    /// The version number, as a string.
    pub version: String,
    /// Where the model was logged (`models:/m-...`, `runs:/...`, a storage URI).
    #[serde(default)]
    pub source: String,
    /// The run that logged it.
    #[serde(default)]
    pub run_id: String,
}

#[derive(Deserialize)]
struct AliasAnswer {
    model_version: ModelVersion,
}

#[derive(Deserialize)]
struct DownloadUri {
    artifact_uri: String,
}

/// An HTTP client for one registry's REST API.
#[derive(Debug, Clone)]
pub struct Mlflow {
    client: Client<HttpConnector, Empty<Bytes>>,
}

impl Default for Mlflow {
    fn default() -> Self {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(Duration::from_secs(5)));
        Mlflow { client: Client::builder(TokioExecutor::new()).build(connector) }
    }
}

fn enc(s: &str) -> String {
    utf8_percent_encode(s, KEEP).to_string()
}

impl Mlflow {
    /// GETs `url` and reads its body, at most `limit` bytes (more is an error, not read).
    pub async fn get(&self, url: &str, limit: u64) -> Result<Bytes, RegistryError> {
        let err = |reason: String| RegistryError { url: url.to_string(), reason };
        let req = Request::get(url).body(Empty::new()).map_err(|e| err(format!("invalid URL: {e}")))?;
        let call = async {
            let resp = self.client.request(req).await.map_err(|e| err(format!("unreachable: {}", chain(&e))))?;
            let status = resp.status();
            if let Some(len) = resp.headers().get(http::header::CONTENT_LENGTH) {
                let len: u64 = len.to_str().ok().and_then(|l| l.parse().ok()).unwrap_or(0);
                if status == StatusCode::OK && len > limit {
                    return Err(err(format!("the answer is {len} bytes, more than the limit of {limit}")));
                }
            }
            let out = match Limited::new(resp.into_body(), usize::try_from(limit).unwrap_or(usize::MAX)).collect().await
            {
                Ok(collected) => collected.to_bytes(),
                Err(e) if e.is::<LengthLimitError>() => {
                    return Err(err(format!("the answer is more than the limit of {limit} bytes")))
                }
                Err(e) => return Err(err(format!("the answer broke off: {e}"))),
            };
            if status != StatusCode::OK {
                let text = String::from_utf8_lossy(&out[..out.len().min(300)]).into_owned();
                return Err(err(format!("answered {status}: {}", text.trim())));
            }
            Ok(out)
        };
        match tokio::time::timeout(CALL_TIMEOUT, call).await {
            Ok(r) => r,
            Err(_) => Err(err(format!("no complete answer within {CALL_TIMEOUT:?}"))),
        }
    }

    async fn json<T: serde::de::DeserializeOwned>(&self, url: &str) -> Result<T, RegistryError> {
        let body = self.get(url, MAX_META_BYTES).await?;
        serde_json::from_slice(&body).map_err(|e| RegistryError {
            url: url.to_string(),
            reason: format!(
                "not the JSON MLflow answers ({e}): {}",
                String::from_utf8_lossy(&body[..body.len().min(200)])
            ),
        })
    }

    /// The version `spec.alias` names now.
    pub async fn alias(&self, spec: &RegistrySpec) -> Result<ModelVersion, RegistryError> {
        let url = spec.url(&format!(
            "/api/2.0/mlflow/registered-models/alias?name={}&alias={}",
            enc(&spec.model),
            enc(&spec.alias)
        ));
        let answer: AliasAnswer = self.json(&url).await?;
        if answer.model_version.version.is_empty() || answer.model_version.version.len() > 64 {
            return Err(RegistryError { url, reason: "the answer has no model_version.version".into() });
        }
        Ok(answer.model_version)
    }

    /// The URL of the folder holding `version`'s artifacts, through the artifact proxy.
    pub async fn artifacts_url(&self, spec: &RegistrySpec, version: &str) -> Result<String, RegistryError> {
        let url = spec.url(&format!(
            "/api/2.0/mlflow/model-versions/get-download-uri?name={}&version={}",
            enc(&spec.model),
            enc(version)
        ));
        let answer: DownloadUri = self.json(&url).await?;
        let Some(path) = answer.artifact_uri.strip_prefix("mlflow-artifacts:") else {
            return Err(RegistryError {
                url,
                reason: format!(
                    "artifact URI {:?} is not served by the tracking server (mlflow-artifacts:/...); start it with \
                     artifact serving (the default, --serve-artifacts)",
                    answer.artifact_uri
                ),
            });
        };
        // mlflow-artifacts:/0/models/m-1/artifacts, or with the server's host: mlflow-artifacts://host:port/0/...
        let path = match path.strip_prefix("//") {
            Some(rest) => rest.split_once('/').map_or("", |(_, p)| p),
            None => path.trim_start_matches('/'),
        };
        if path.is_empty() || path.split('/').any(|s| s == ".." || s == ".") {
            return Err(RegistryError { url, reason: format!("invalid artifact URI {:?}", answer.artifact_uri) });
        }
        let path: Vec<String> = path.split('/').filter(|s| !s.is_empty()).map(enc).collect();
        Ok(spec.url(&format!("/api/2.0/mlflow-artifacts/artifacts/{}", path.join("/"))))
    }

    /// The ONNX file's name in a logged model's folder: its MLmodel's `flavors.onnx.data`
    /// (`model.onnx` as `mlflow.onnx` writes it).
    pub async fn onnx_file(&self, folder: &str) -> Result<String, RegistryError> {
        let url = format!("{folder}/MLmodel");
        let body = self.get(&url, MAX_META_BYTES).await?;
        let doc: serde_yaml_ng::Value = serde_yaml_ng::from_slice(&body)
            .map_err(|e| RegistryError { url: url.clone(), reason: format!("not an MLmodel file: {e}") })?;
        let Some(onnx) = doc.get("flavors").and_then(|f| f.get("onnx")) else {
            let flavors: Vec<String> = doc
                .get("flavors")
                .and_then(|f| f.as_mapping())
                .map(|m| m.keys().filter_map(|k| k.as_str().map(str::to_string)).collect())
                .unwrap_or_default();
            return Err(RegistryError {
                url,
                reason: format!(
                    "the model has no onnx flavor (flavors: {}); log it with mlflow.onnx",
                    flavors.join(", ")
                ),
            });
        };
        let data = onnx.get("data").and_then(|d| d.as_str()).unwrap_or("model.onnx");
        if data.is_empty() || data.split('/').any(|s| s == ".." || s.is_empty()) {
            return Err(RegistryError { url, reason: format!("invalid flavors.onnx.data {data:?}") });
        }
        Ok(data.split('/').map(enc).collect::<Vec<_>>().join("/"))
    }
}

/// An error with its sources, one line.
fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

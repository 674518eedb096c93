//! Webhooks: rollout events POSTed as JSON to CD pipelines and retraining triggers, signed with
//! HMAC-SHA256 (`x-modelgate-signature: sha256=<hex>`), retried with exponential backoff on
//! connection errors, timeouts, 408, 429 and 5xx.

use super::events::Event;
use crate::config::WebhookSpec;
use crate::protocol::secret::{hex, hmac_sha256};
use bytes::Bytes;
use http::Request;
use http_body_util::Full;
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;
use std::time::Duration;

/// The signature header: `sha256=` and the hex HMAC-SHA256 of the body.
pub const SIGNATURE_HEADER: &str = "x-modelgate-signature";

/// HMAC-SHA256 of `body` with `key`, hex.
pub fn signature(key: &[u8], body: &[u8]) -> String {
    hex(&hmac_sha256(key, body))
}

/// Sends events to the webhooks that want them, each delivery in its own task.
#[derive(Debug, Clone)]
pub struct Dispatcher {
    client: Client<HttpConnector, Full<Bytes>>,
}

impl Default for Dispatcher {
    fn default() -> Self {
        Dispatcher { client: Client::builder(TokioExecutor::new()).build_http() }
    }
}

impl Dispatcher {
    /// Delivers `event` to every hook that wants its kind, off the caller's path.
    pub fn send(&self, hooks: &[WebhookSpec], event: &Event) {
        let value = serde_json::to_value(event).unwrap_or_default();
        for hook in hooks.iter().filter(|h| h.events.as_ref().is_none_or(|k| k.iter().any(|k| k == event.kind))) {
            let (body, content_type) = body(hook, &value);
            let (client, hook, kind) = (self.client.clone(), hook.clone(), event.kind);
            tokio::spawn(async move { deliver(client, hook, body, content_type, kind).await });
        }
    }
}

/// The body a hook gets for `event`, and its content type: the event or a CloudEvent, wrapped
/// in the hook's template if it has one (a template's body is `application/json`).
pub fn body(hook: &WebhookSpec, event: &serde_json::Value) -> (Bytes, &'static str) {
    use crate::config::WebhookFormat;
    use crate::protocol::cloudevents;
    let (value, content_type) = match hook.format {
        WebhookFormat::Json => (event.clone(), "application/json"),
        WebhookFormat::CloudEvents => (cloudevents::structured(event), cloudevents::CONTENT_TYPE),
    };
    match &hook.template {
        Some(t) => (Bytes::from(cloudevents::render(t, event, &value)), "application/json"),
        None => (Bytes::from(value.to_string()), content_type),
    }
}

async fn deliver(
    client: Client<HttpConnector, Full<Bytes>>,
    hook: WebhookSpec,
    body: Bytes,
    content_type: &'static str,
    kind: &'static str,
) {
    let mut backoff = Duration::from_millis(100);
    for attempt in 0..=hook.retries {
        let mut req =
            Request::post(hook.url.clone()).header("content-type", content_type).header("x-modelgate-event", kind);
        for (name, value) in &hook.headers {
            req = req.header(name, value);
        }
        if let Some(key) = &hook.secret {
            req = req.header(SIGNATURE_HEADER, format!("sha256={}", signature(key, &body)));
        }
        let Ok(req) = req.body(Full::new(body.clone())) else { return };
        let outcome = tokio::time::timeout(hook.timeout, client.request(req)).await;
        let retry = match &outcome {
            Ok(Ok(resp)) if resp.status().is_success() => return,
            Ok(Ok(resp)) => {
                let s = resp.status().as_u16();
                s == 408 || s == 429 || s >= 500
            }
            Ok(Err(_)) | Err(_) => true,
        };
        let what = match outcome {
            Ok(Ok(resp)) => format!("status {}", resp.status()),
            Ok(Err(e)) => e.to_string(),
            Err(_) => format!("no answer within {:?}", hook.timeout),
        };
        if !retry || attempt == hook.retries {
            tracing::warn!(url = %hook.url, kind, attempts = attempt + 1, "webhook not delivered: {what}");
            return;
        }
        tracing::debug!(url = %hook.url, kind, attempt, "webhook attempt failed ({what}); retrying in {backoff:?}");
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(30));
    }
}

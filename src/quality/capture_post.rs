//! Posting captured lines as CloudEvents 1.0 (structured mode) to a URL, as KServe's payload
//! logger does: one thread per route with its own small runtime and a bounded queue fed by the
//! capture writer. A line the poster has no room for is dropped and counted; a failed post is
//! counted, not retried (the files hold every line).

use bytes::Bytes;
use crossbeam_channel::{Sender, TrySendError};
use http::Request;
use http_body_util::Full;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use metrics::Counter;
use std::time::{Duration, SystemTime};

/// The queue to a route's poster thread.
#[derive(Debug)]
pub(super) struct Poster {
    tx: Sender<Vec<u8>>,
    dropped: Counter,
}

impl Poster {
    /// Hands a written line to the poster; never waits.
    pub fn offer(&self, line: Vec<u8>) {
        if let Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) = self.tx.try_send(line) {
            self.dropped.increment(1);
        }
    }
}

/// Starts the poster of `route` to `url`.
pub(super) fn start(
    route: &str,
    url: http::Uri,
    queue: usize,
    outcome: &impl Fn(&'static str) -> Counter,
) -> Result<Poster, String> {
    let (tx, rx) = crossbeam_channel::bounded::<Vec<u8>>(queue);
    let (posted, failed) = (outcome("posted"), outcome("post_failed"));
    let source = format!("/modelgate/routes/{route}");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the capture poster: {e}"))?;
    std::thread::Builder::new()
        .name(format!("capture-post-{}", route.replace('/', "_")))
        .spawn(move || {
            let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
            let mut seq = 0u64;
            while let Ok(line) = rx.recv() {
                seq += 1;
                let body = cloudevent(&source, seq, &line);
                let ok = runtime.block_on(async {
                    let Ok(req) = Request::post(url.clone())
                        .header("content-type", crate::protocol::cloudevents::CONTENT_TYPE)
                        .body(Full::new(Bytes::from(body)))
                    else {
                        return false;
                    };
                    matches!(
                        tokio::time::timeout(Duration::from_secs(5), client.request(req)).await,
                        Ok(Ok(resp)) if resp.status().is_success()
                    )
                });
                if ok {
                    posted.increment(1)
                } else {
                    failed.increment(1)
                }
            }
        })
        .map_err(|e| format!("cannot start the capture poster: {e}"))?;
    Ok(Poster { tx, dropped: outcome("post_dropped") })
}

/// A captured line (JSON, newline-terminated) as a structured-mode CloudEvent, without parsing
/// it again: `type` is `io.modelgate.capture`, `id` `<ms>-<seq>`, the line is `data`.
fn cloudevent(source: &str, seq: u64, line: &[u8]) -> Vec<u8> {
    let now = SystemTime::now();
    let ms = now.duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_millis());
    let head = serde_json::json!({
        "specversion": "1.0",
        "id": format!("{ms}-{seq}"),
        "source": source,
        "type": "io.modelgate.capture",
        "time": humantime::format_rfc3339_millis(now).to_string(),
        "datacontenttype": "application/json",
    })
    .to_string();
    let data = line.strip_suffix(b"\n").unwrap_or(line);
    let mut out = Vec::with_capacity(head.len() + data.len() + 10);
    out.extend_from_slice(&head.as_bytes()[..head.len() - 1]);
    out.extend_from_slice(b",\"data\":");
    out.extend_from_slice(data);
    out.push(b'}');
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_line_becomes_the_data_of_a_cloudevent() {
        let body = super::cloudevent("/modelgate/routes/bc", 3, b"{\"type\":\"answer\",\"key\":\"k\"}\n");
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["specversion"], "1.0");
        assert_eq!(v["type"], "io.modelgate.capture");
        assert_eq!(v["source"], "/modelgate/routes/bc");
        assert_eq!(v["data"]["key"], "k");
        assert!(v["id"].as_str().unwrap().ends_with("-3"));
    }
}

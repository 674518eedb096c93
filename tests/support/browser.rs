//! Headless Chromium (Debian's `chromium`, installed by `make chromium`; `CHROMIUM` may name
//! another binary) driven over the DevTools protocol: load a page, evaluate script in it, wait
//! for a condition, take screenshots into `target/console-screenshots/`.

use super::{get, root};
use base64::Engine;
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use std::path::PathBuf;
use std::time::{Duration, Instant};
use tokio_tungstenite::tungstenite::Message;

type Socket = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Headless Chromium with a fresh profile, killed when dropped.
pub struct Browser {
    child: std::process::Child,
    page: Socket,
    next_id: u64,
    _profile: tempfile::TempDir,
}

fn chromium() -> PathBuf {
    let path = std::env::var_os("CHROMIUM").map_or_else(|| PathBuf::from("/usr/bin/chromium"), PathBuf::from);
    assert!(
        path.exists(),
        "{} is missing: the console's browser test needs Chromium; run `make chromium` (scripts/fetch-chromium.sh) \
         or set CHROMIUM=/path/to/chromium",
        path.display()
    );
    path
}

impl Browser {
    pub async fn start() -> Browser {
        let profile = tempfile::tempdir().unwrap();
        let child = std::process::Command::new(chromium())
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--disable-dev-shm-usage",
                "--remote-debugging-port=0",
                "--window-size=1280,1600",
            ])
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .arg("about:blank")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start chromium: {e}"));
        // Chromium writes the port it bound into its profile once the DevTools server is up.
        let port_file = profile.path().join("DevToolsActivePort");
        // A bound, not a measurement: generous because the test machines' cores are shared.
        let deadline = Instant::now() + Duration::from_secs(60);
        let port = loop {
            if let Some(p) =
                std::fs::read_to_string(&port_file).ok().and_then(|t| t.lines().next()?.parse::<u16>().ok())
            {
                break p;
            }
            assert!(Instant::now() < deadline, "chromium did not open its DevTools port within 60 s");
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        let list = get(&format!("http://127.0.0.1:{port}/json/list")).await.json();
        let ws = list
            .as_array()
            .and_then(|l| l.iter().find(|t| t["type"] == "page"))
            .and_then(|t| t["webSocketDebuggerUrl"].as_str())
            .unwrap_or_else(|| panic!("no page target in {list}"))
            .to_string();
        let (page, _) = tokio_tungstenite::connect_async(ws.as_str()).await.unwrap();
        Browser { child, page, next_id: 0, _profile: profile }
    }

    /// One DevTools command; events arriving meanwhile are skipped.
    pub async fn call(&mut self, method: &str, params: Value) -> Value {
        self.next_id += 1;
        let id = self.next_id;
        let msg = json!({ "id": id, "method": method, "params": params }).to_string();
        self.page.send(Message::Text(msg.into())).await.unwrap();
        let answer = tokio::time::timeout(Duration::from_secs(30), async {
            while let Some(m) = self.page.next().await {
                if let Message::Text(t) = m.unwrap() {
                    let v: Value = serde_json::from_str(&t).unwrap();
                    if v["id"] == id {
                        return v;
                    }
                }
            }
            panic!("the DevTools connection closed")
        })
        .await
        .unwrap_or_else(|_| panic!("no answer to {method} within 30 s"));
        assert!(answer.get("error").is_none(), "{method}: {answer}");
        answer["result"].clone()
    }

    /// Evaluates `js` in the page (awaiting a promise) and returns its value.
    pub async fn eval(&mut self, js: &str) -> Value {
        let r = self
            .call("Runtime.evaluate", json!({ "expression": js, "awaitPromise": true, "returnByValue": true }))
            .await;
        assert!(r.get("exceptionDetails").is_none(), "{js}: {r}");
        r["result"]["value"].clone()
    }

    /// Waits until `js` is true in the page.
    pub async fn wait_for(&mut self, js: &str, what: &str) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while self.eval(js).await != json!(true) {
            let page = self.eval("document.body.innerText").await;
            assert!(
                Instant::now() < deadline,
                "waited 60 s for {what}; the page reads:\n{}",
                page.as_str().unwrap_or("")
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Writes the whole page as `target/console-screenshots/{name}`.
    pub async fn screenshot(&mut self, name: &str) {
        let r = self.call("Page.captureScreenshot", json!({ "format": "png", "captureBeyondViewport": true })).await;
        let png = base64::engine::general_purpose::STANDARD.decode(r["data"].as_str().unwrap()).unwrap();
        let dir = root().join("target/console-screenshots");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(name), png).unwrap();
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

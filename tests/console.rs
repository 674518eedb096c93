//! The operator console in a real browser: headless Chromium (Debian's `chromium`, installed by
//! `make chromium`; `CHROMIUM` may name another binary) driven over the DevTools protocol loads
//! `/ui/` from a gateway with a running canary, reads the page, and clicks.
//! Screenshots go to `target/console-screenshots/`. A second test checks `/admin/series` and the
//! assets over plain HTTP.

mod support;

use http::StatusCode;
use serde_json::{json, Value};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use support::browser::Browser;
use support::*;

fn routes() -> String {
    format!(
        r#"backends:
  - name: stable
    onnx: {{path: "{v1}"}}
  - name: candidate
    onnx: {{path: "{v2}"}}
routes:
  - model: risk
    strategy:
      canary:
        stable: stable
        canary: candidate
        steps:
          - {{weight: 30, pause: 10m}}
          - {{weight: 60, pause: 10m}}
        analysis:
          interval: 200ms
          min_samples: 20
          max_error_rate: 0.5
  - model: plain
    backend: stable
"#,
        v1 = model("breast-cancer-v1.onnx"),
        v2 = model("breast-cancer-v2.onnx"),
    )
}

async fn phase(gw: &Gateway, route: &str) -> String {
    let view = get(&gw.admin_url("/admin/routes")).await.json();
    let r = view["routes"].as_array().unwrap().iter().find(|r| r["name"] == route).unwrap().clone();
    r["status"]["phase"].as_str().unwrap().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_shows_a_running_canary_and_its_rollback_button_rolls_it_back() {
    let gw = Gateway::start(&routes()).await;
    let stop = Arc::new(AtomicBool::new(false));
    let load = {
        let (url, stop) = (gw.url("/v2/models/risk/infer"), stop.clone());
        tokio::spawn(async move {
            while !stop.load(Ordering::SeqCst) {
                let a = post_json(&url, &body()).await;
                assert_eq!(a.status, StatusCode::OK);
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
    };

    // The page and its assets come with the CSP; the series is JSON.
    let page = get(&gw.admin_url("/ui/")).await;
    assert_eq!(page.status, StatusCode::OK);
    let csp = page.headers["content-security-policy"].to_str().unwrap();
    assert!(csp.contains("script-src 'self'") && csp.contains("frame-ancestors 'none'"), "{csp}");
    assert!(!String::from_utf8_lossy(&page.body).contains("<script>"), "no inline script");
    assert_eq!(get(&gw.admin_url("/admin/series?route=nope")).await.status, StatusCode::NOT_FOUND);

    let mut b = Browser::start().await;
    b.call("Page.navigate", json!({ "url": gw.admin_url("/ui/") })).await;
    b.wait_for("document.querySelectorAll('section.route').length === 2", "both routes").await;
    let variants = b
        .eval("[...document.querySelectorAll('section[data-route=risk] tr[data-variant]')].map(r => r.dataset.variant)")
        .await;
    assert_eq!(variants, json!(["stable", "candidate"]));
    let strategy = b.eval("document.querySelector('section[data-route=risk] .strategy').textContent").await;
    assert_eq!(strategy, "canary");
    let weight = b
        .eval("document.querySelector('section[data-route=risk] tr[data-variant=candidate] .weight').textContent")
        .await;
    assert_eq!(weight, "30%");
    b.wait_for(
        "Number(document.querySelector('section[data-route=risk] [data-chart=requests_per_s] svg')?.dataset.points) >= 3",
        "the requests/s chart to have points",
    )
    .await;
    // After the first whole answer the page asks only for newer points and appends them.
    let points =
        "Number(document.querySelector('section[data-route=risk] [data-chart=requests_per_s] svg')?.dataset.points)";
    let held = b.eval(points).await.as_u64().unwrap();
    b.wait_for(&format!("{points} >= {}", held + 3), "the chart to keep its points and add new ones").await;
    let asked =
        b.eval("performance.getEntriesByType('resource').some(e => e.name.includes('/admin/series?since='))").await;
    assert_eq!(asked, true, "the page polls with since");
    let lines =
        b.eval("document.querySelectorAll('section[data-route=risk] [data-chart=p99_ms] path.line').length").await;
    assert_eq!(lines, 2, "a p99 line per variant");
    b.screenshot("overview.png").await;

    // Confirmations are accepted; a wrong token gets the 401 sentence and changes nothing.
    b.eval("window.confirm = () => true; true").await;
    b.eval(
        "document.getElementById('token').value = 'wrong-token'; document.getElementById('token-save').click(); true",
    )
    .await;
    b.eval("document.querySelector('section[data-route=risk] button[data-action=rollback]').click(); true").await;
    b.wait_for("document.getElementById('message').textContent.includes('401')", "the 401 sentence").await;
    let text = b.eval("document.getElementById('message').textContent").await;
    assert!(text.as_str().unwrap().contains("refused the admin token"), "{text}");
    assert_eq!(phase(&gw, "risk").await, "progressing");
    b.screenshot("wrong-token.png").await;

    // The right token: the click rolls the canary back, as the admin API sees it.
    let set = format!(
        "document.getElementById('token').value = '{ADMIN_TOKEN}'; document.getElementById('token-save').click(); true"
    );
    b.eval(&set).await;
    assert_eq!(b.eval("sessionStorage.length === 1 && localStorage.length === 0").await, true);

    // A stale version (as if another operator changed the route meanwhile): the 412 sentence.
    b.eval("state.sections.get('risk').route.etag = 0; document.querySelector('section[data-route=risk] button[data-action=pause]').click(); true").await;
    b.wait_for("document.getElementById('message').textContent.includes('412')", "the 412 sentence").await;
    let view = get(&gw.admin_url("/admin/routes")).await.json();
    assert_eq!(view["routes"][0]["status"]["progress"]["paused"], false, "{view}");

    // Set weight: typed in the page, seen by the admin API.
    b.eval("document.querySelector('section[data-route=risk] .weight-input').value = '45'; document.querySelector('section[data-route=risk] button[data-action=\"set weight\"]').click(); true").await;
    b.wait_for(
        "document.getElementById('message').textContent.startsWith('Done: set the canary weight')",
        "the weight",
    )
    .await;
    let view = get(&gw.admin_url("/admin/routes")).await.json();
    assert_eq!(view["routes"][0]["variants"][1]["weight"], 45.0, "{view}");
    b.wait_for(
        "document.querySelector('section[data-route=risk] tr[data-variant=candidate] .weight').textContent === '45%'",
        "the new weight",
    )
    .await;
    b.eval("document.querySelector('section[data-route=risk] button[data-action=rollback]').click(); true").await;
    b.wait_for("document.getElementById('message').textContent.startsWith('Done: roll back')", "the rollback").await;
    assert_eq!(phase(&gw, "risk").await, "rolled_back");
    b.wait_for(
        "document.querySelector('section[data-route=risk] .phase').textContent === 'rolled_back'",
        "the new phase",
    )
    .await;
    b.wait_for("!!document.querySelector('#events li[data-kind=admin][data-route=risk]')", "the admin event").await;
    b.wait_for(
        "!!document.querySelector('section[data-route=risk] [data-chart=requests_per_s] line.marker[data-kind=admin]')",
        "the rollback marker on the chart",
    )
    .await;
    b.screenshot("rolled-back.png").await;

    // A refused reload: the outcome and each error with its place.
    std::fs::write(gw.routes_file(), routes().replace("weight: 30", "weight: 300")).unwrap();
    b.wait_for("!!document.querySelector('#reload.refused .reload-errors li code')", "the refused reload").await;
    let place = b.eval("document.querySelector('#reload .reload-errors li code').textContent").await;
    assert!(place.as_str().unwrap().starts_with("routes[0]"), "{place}");
    b.screenshot("reload-refused.png").await;

    stop.store(true, Ordering::SeqCst);
    load.await.unwrap();
    drop(b);
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_series_endpoint_answers_equal_columns_with_markers_and_json_errors() {
    let gw = Gateway::start(&routes()).await;
    let url = gw.url("/v2/models/risk/infer");
    let a = gw.admin_post("/admin/routes/risk/weight", json!({ "weight": 40 }).to_string()).await;
    assert_eq!(a.status, StatusCode::OK, "{:?}", a.body);
    let deadline = Instant::now() + Duration::from_secs(60);
    let series = loop {
        for _ in 0..20 {
            assert_eq!(post_json(&url, &body()).await.status, StatusCode::OK);
        }
        let s = get(&gw.admin_url("/admin/series?route=risk")).await.json();
        let variants = s["routes"][0]["variants"].as_array().cloned().unwrap_or_default();
        if variants.len() == 2 && variants.iter().all(|v| v["t"].as_array().is_some_and(|t| t.len() >= 2)) {
            break s;
        }
        assert!(Instant::now() < deadline, "no points after 60 s: {s}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(series["routes"].as_array().unwrap().len(), 1, "only the route asked for");
    assert_eq!(series["resolution_s"], 1);
    for v in series["routes"][0]["variants"].as_array().unwrap() {
        let n = v["t"].as_array().unwrap().len();
        for col in ["requests_per_s", "error_rate", "p50_ms", "p99_ms", "business"] {
            assert_eq!(v[col].as_array().unwrap().len(), n, "{col} has a value per second: {v}");
        }
    }
    let markers = series["routes"][0]["markers"].as_array().unwrap();
    assert!(markers.iter().any(|m| m["kind"] == "admin" && m["at_ms"].as_u64().is_some()), "{markers:?}");
    let all = get(&gw.admin_url("/admin/series")).await.json();
    assert_eq!(all["routes"].as_array().unwrap().len(), 2);

    // since: only the points after it, every variant still listed.
    let newest = series["newest"].as_u64().unwrap();
    let delta = get(&gw.admin_url(&format!("/admin/series?route=risk&since={newest}"))).await.json();
    assert_eq!(delta["since"], newest);
    let variants = delta["routes"][0]["variants"].as_array().unwrap();
    assert_eq!(variants.len(), 2, "{delta}");
    for v in variants {
        assert!(v["t"].as_array().unwrap().iter().all(|t| t.as_u64().unwrap() > newest), "{v}");
        assert_eq!(v["t"].as_array().unwrap().len(), v["p99_ms"].as_array().unwrap().len());
    }
    assert!(delta["routes"][0]["markers"].as_array().is_some_and(|m| !m.is_empty()), "markers are always sent");
    assert_eq!(series["fleet"], Value::Null, "not in a fleet");
    assert_eq!(series["routes"][0]["replicas"], 1);
    let bad_since = get(&gw.admin_url("/admin/series?since=yesterday")).await;
    assert_eq!(bad_since.status, StatusCode::BAD_REQUEST);
    assert!(bad_since.error().contains("since"));

    let missing = get(&gw.admin_url("/admin/series?route=nope")).await;
    assert_eq!(missing.status, StatusCode::NOT_FOUND);
    assert!(missing.error().contains("nope"));
    let bad = get(&gw.admin_url("/admin/series?route=%zz")).await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);
    assert!(!bad.error().is_empty());

    let redirect = get(&gw.admin_url("/ui")).await;
    assert_eq!(redirect.status, StatusCode::MOVED_PERMANENTLY);
    assert_eq!(redirect.headers["location"], "/ui/");
    for (path, kind) in [("/ui/console.js", "text/javascript"), ("/ui/console.css", "text/css")] {
        let a = get(&gw.admin_url(path)).await;
        assert_eq!(a.status, StatusCode::OK);
        assert!(a.headers["content-type"].to_str().unwrap().starts_with(kind));
        assert!(a.headers.contains_key("content-security-policy"));
    }
    assert_eq!(get(&gw.admin_url("/ui/nothing.js")).await.status, StatusCode::NOT_FOUND);
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_console_off_there_is_no_page_and_no_series() {
    let gw = Gateway::start(&format!("server:\n  console: false\n{}", routes())).await;
    for path in ["/ui/", "/ui/console.js", "/admin/series"] {
        let a = get(&gw.admin_url(path)).await;
        assert_eq!(a.status, StatusCode::NOT_FOUND, "{path}");
        assert!(!a.error().is_empty(), "{path}: a JSON error");
    }
    assert_eq!(get(&gw.admin_url("/admin/routes")).await.status, StatusCode::OK);
    gw.shutdown().await;
}

//! Deployment strategies on hot-swapped routing tables, over real sockets and real models.

mod support;
// Shadow traffic, in tests/strategies/shadow.rs (one test binary, split by subject).
#[path = "strategies/shadow.rs"]
mod shadow;

use http::{Method, StatusCode};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use support::*;

fn backends() -> String {
    format!(
        "backends:\n  - name: v1\n    onnx: {{path: \"{}\"}}\n  - name: v2\n    onnx: {{path: \"{}\"}}\n  - name: v3\n    onnx: {{path: \"{}\"}}\n  - name: d1\n    onnx: {{path: \"{}\"}}\n  - name: d2\n    onnx: {{path: \"{}\"}}\n",
        model("breast-cancer-v1.onnx"),
        model("breast-cancer-v2.onnx"),
        model("breast-cancer-v2.onnx"),
        model("diabetes-v1.onnx"),
        model("diabetes-v1.onnx"),
    )
}

fn variant(a: &Answer) -> String {
    a.headers.get("x-modelgate-variant").map(|v| v.to_str().unwrap().to_string()).unwrap_or_default()
}

/// GETs `url` `n` times (with `headers(i)`) over `concurrency` connections; returns variant counts.
async fn count_variants(
    url: &str,
    n: usize,
    headers: impl Fn(usize) -> Vec<(String, String)> + Send + Sync + 'static,
) -> HashMap<String, usize> {
    let headers = Arc::new(headers);
    let next = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let (url, headers, next) = (url.to_string(), headers.clone(), next.clone());
        tasks.push(tokio::spawn(async move {
            let mut seen: HashMap<String, usize> = HashMap::new();
            loop {
                let i = next.fetch_add(1, Ordering::SeqCst);
                if i >= n {
                    return seen;
                }
                let h = headers(i);
                let h: Vec<(&str, &str)> = h.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
                let a = send(Method::GET, &url, "", &h).await;
                assert_eq!(a.status, StatusCode::OK, "{:?}", a.body);
                *seen.entry(variant(&a)).or_default() += 1;
            }
        }));
    }
    let mut total: HashMap<String, usize> = HashMap::new();
    for t in tasks {
        for (k, v) in t.await.unwrap() {
            *total.entry(k).or_default() += v;
        }
    }
    total
}

fn share(counts: &HashMap<String, usize>, name: &str) -> f64 {
    let n: usize = counts.values().sum();
    *counts.get(name).unwrap_or(&0) as f64 / n as f64
}

#[tokio::test]
async fn weighted_canary_and_n_way_ab_land_within_tolerance() {
    let gw = Gateway::start(&format!(
        "{}routes:\n  - model: canary\n    strategy:\n      canary: {{stable: v1, canary: v2, weight: 10}}\n  - model: ab\n    strategy:\n      ab_test: {{variants: {{v1: 20, v2: 30, v3: 50}}, sticky: {{header: x-user}}}}\n",
        backends()
    ))
    .await;
    // The ready endpoint is assigned like infer, and cheap.
    let counts = count_variants(&gw.url("/v2/models/canary/ready"), 10_000, |_| vec![]).await;
    let canary = share(&counts, "v2");
    assert!((0.085..=0.115).contains(&canary), "canary share {canary} from {counts:?}");

    let counts =
        count_variants(&gw.url("/v2/models/ab/ready"), 10_000, |i| vec![("x-user".into(), format!("user-{i}"))]).await;
    for (arm, want) in [("v1", 0.2), ("v2", 0.3), ("v3", 0.5)] {
        let got = share(&counts, arm);
        assert!((got - want).abs() <= 0.015, "arm {arm}: {got} vs {want} from {counts:?}");
    }
}

fn sticky_routes() -> String {
    format!(
        "{}routes:\n  - model: canary\n    strategy:\n      canary: {{stable: v1, canary: v2, weight: 10, sticky: {{header: x-user}}}}\n  - model: ab\n    strategy:\n      ab_test: {{variants: {{v1: 1, v2: 1}}, sticky: {{cookie: mg_user}}}}\n",
        backends()
    )
}

async fn assignments(gw: &Gateway, keys: usize) -> Vec<String> {
    let mut out = vec![String::new(); keys];
    let url = gw.url("/v2/models/canary/ready");
    let results = Arc::new(std::sync::Mutex::new(Vec::new()));
    let next = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let (url, results, next) = (url.clone(), results.clone(), next.clone());
        tasks.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::SeqCst);
                if i >= keys {
                    return;
                }
                let key = format!("user-{i}");
                let a = send(Method::GET, &url, "", &[("x-user", &key)]).await;
                assert_eq!(a.status, StatusCode::OK);
                results.lock().unwrap().push((i, variant(&a)));
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    for (i, v) in results.lock().unwrap().drain(..) {
        out[i] = v;
    }
    out
}

#[tokio::test]
async fn sticky_keys_hold_across_restarts_and_replicas_and_raising_the_canary_only_moves_users_to_it() {
    let keys = 10_000;
    let first = Gateway::start(&sticky_routes()).await;
    let before = assignments(&first, keys).await;
    let replica = Gateway::start(&sticky_routes()).await;
    assert_eq!(assignments(&replica, keys).await, before, "two gateways agree on every key");
    first.shutdown().await;
    let restarted = Gateway::start(&sticky_routes()).await;
    assert_eq!(assignments(&restarted, keys).await, before, "a restarted gateway agrees on every key");
    let on_canary = before.iter().filter(|v| *v == "v2").count();
    assert!((800..1200).contains(&on_canary), "{on_canary} of {keys} keys on the 10% canary");

    // Raise the canary from 10% to 50% through the admin API.
    let a = restarted.admin_post("/admin/routes/canary/weight", r#"{"weight": 50}"#).await;
    assert_eq!(a.status, StatusCode::OK, "{:?}", a.body);
    let after = assignments(&restarted, keys).await;
    let back = before.iter().zip(&after).filter(|(b, a)| *b == "v2" && *a == "v1").count();
    assert_eq!(back, 0, "no key moves from canary back to stable");
    let moved = before.iter().zip(&after).filter(|(b, a)| *b == "v1" && *a == "v2").count();
    let now_on_canary = after.iter().filter(|v| *v == "v2").count();
    assert!((4_700..5_300).contains(&now_on_canary), "{now_on_canary} keys on the 50% canary");
    assert_eq!(on_canary + moved, now_on_canary);
}

#[tokio::test]
async fn pins_and_cookies() {
    let gw = Gateway::start(&sticky_routes()).await;
    // The version path and the override header pin a variant, whatever the weights (with the
    // admin token, as the default `overrides: admin_token` wants).
    for _ in 0..20 {
        let a = send(Method::GET, &gw.url("/v2/models/canary/versions/v2/ready"), "", &[PIN_AUTH]).await;
        assert_eq!(variant(&a), "v2");
        let pin = [("x-modelgate-variant", "v2"), PIN_AUTH];
        let a = send(Method::GET, &gw.url("/v2/models/canary/ready"), "", &pin).await;
        assert_eq!(variant(&a), "v2");
    }
    let pin = [("x-modelgate-variant", "v9"), PIN_AUTH];
    let a = send(Method::GET, &gw.url("/v2/models/canary/ready"), "", &pin).await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST);
    assert_eq!(a.error(), "x-modelgate-variant: route \"canary\" has no variant \"v9\"; variants: v1, v2");

    // No cookie: the gateway draws a key and sets it; with it, the user stays on that arm.
    for _ in 0..10 {
        let a = get(&gw.url("/v2/models/ab/ready")).await;
        let cookie = a.headers["set-cookie"].to_str().unwrap().to_string();
        assert!(cookie.starts_with("mg_user=") && cookie.contains("Path=/"), "{cookie}");
        let pair = cookie.split(';').next().unwrap().to_string();
        let first = variant(&a);
        for _ in 0..10 {
            let b = send(Method::GET, &gw.url("/v2/models/ab/ready"), "", &[("cookie", &pair)]).await;
            assert_eq!(variant(&b), first);
            assert!(!b.headers.contains_key("set-cookie"), "a cookie that is there is not set again");
        }
    }
    // The gateway request id names route and variant.
    let a = send(Method::GET, &gw.url("/v2/models/canary/versions/v1/ready"), "", &[PIN_AUTH]).await;
    let id = a.headers["x-modelgate-request-id"].to_str().unwrap();
    let codec = modelgate::protocol::request_id::IdCodec::new(Some(FEEDBACK_KEY.to_vec()), Duration::from_secs(60));
    let decoded = codec.decode(id).unwrap();
    assert_eq!((decoded.route.as_str(), decoded.variant.as_str()), ("canary", "v1"));
}

fn sample() -> Value {
    let e = &expected_outputs()["models"]["breast-cancer-v1"];
    let mut input = e["inputs"]["input"].clone();
    input["name"] = json!("input");
    json!({ "inputs": [input] })
}

/// A load client's result: requests sent, and (status, had Retry-After) of every non-200 answer.
type LoadClient = tokio::task::JoinHandle<(usize, Vec<(u16, bool)>)>;

/// Sends real inferences from `clients` loops until `stop`.
fn load(url: String, clients: usize, stop: Arc<AtomicBool>) -> Vec<LoadClient> {
    (0..clients)
        .map(|_| {
            let (url, stop) = (url.clone(), stop.clone());
            tokio::spawn(async move {
                let body = sample();
                let (mut sent, mut bad) = (0, Vec::new());
                while !stop.load(Ordering::SeqCst) {
                    let a = post_json(&url, &body).await;
                    sent += 1;
                    if a.status != StatusCode::OK {
                        bad.push((a.status.as_u16(), a.headers.contains_key("retry-after")));
                    }
                }
                (sent, bad)
            })
        })
        .collect()
}

#[tokio::test]
async fn two_hundred_swaps_under_load_lose_no_request() {
    let routes = |w: u32| {
        format!(
            "{}routes:\n  - model: canary\n    strategy:\n      canary: {{stable: v1, canary: v2, weight: {w}}}\n  - model: bg\n    strategy:\n      blue_green: {{active: v1, preview: v2, scale_down_delay: 1h}}\n",
            backends()
        )
    };
    let gw = Gateway::start(&routes(10)).await;
    let stop = Arc::new(AtomicBool::new(false));
    let mut clients = load(gw.url("/v2/models/canary/infer"), 3, stop.clone());
    clients.extend(load(gw.url("/v2/models/bg/infer"), 3, stop.clone()));
    let start_gen = gw.controller.table().load().generation();
    for i in 0..200u32 {
        match i % 3 {
            0 => {
                let a = gw.admin_post("/admin/routes/canary/weight", format!("{{\"weight\": {}}}", i % 100)).await;
                assert_eq!(a.status, StatusCode::OK, "{:?}", a.body);
            }
            1 => {
                // Replaced whole (temp file + rename), as the README asks of programs: the
                // watcher may read the file at any moment, and half a file can be a valid table.
                let temp = gw.routes_file().with_extension("yaml.tmp");
                std::fs::write(&temp, routes(i % 100)).unwrap();
                std::fs::rename(&temp, gw.routes_file()).unwrap();
                gw.controller.reload_file().await.unwrap();
            }
            _ => {
                let a = gw.admin_post("/admin/routes/bg/switch", "").await;
                assert_eq!(a.status, StatusCode::OK, "{:?}", a.body);
            }
        }
    }
    stop.store(true, Ordering::SeqCst);
    let (mut sent, mut bad) = (0, Vec::new());
    for c in clients {
        let (s, b) = c.await.unwrap();
        sent += s;
        bad.extend(b);
    }
    let swaps = gw.controller.table().load().generation() - start_gen;
    assert!(swaps >= 200, "{swaps} swaps");
    assert!(sent > 200, "{sent} requests during the swaps");
    assert!(bad.is_empty(), "{} of {sent} requests failed during {swaps} swaps: {bad:?}", bad.len());
    println!("{sent} requests, {swaps} table swaps, 0 failed");
}

async fn admin_routes(gw: &Gateway) -> Value {
    get(&gw.admin_url("/admin/routes")).await.json()
}

#[tokio::test]
async fn an_invalid_file_changes_nothing_and_a_valid_one_applies_within_two_seconds() {
    // Backend names of their own: worker threads are named after them, and tests run side by side.
    let routes = |w: &str| {
        format!(
            "{}routes:\n  - model: canary\n    strategy:\n      canary: {{stable: keep-a, canary: keep-b, weight: {w}}}\n",
            backends().replace("name: v1", "name: keep-a").replace("name: v2", "name: keep-b")
        )
    };
    let gw = Gateway::start(&routes("10")).await;
    let before = admin_routes(&gw).await;
    assert_eq!(before["reload"]["ok"], true);
    let workers_before = worker_tids();

    std::fs::write(gw.routes_file(), routes("250").replace("name: v3", "name: v3\n    bogus: 1")).unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let view = loop {
        let v = admin_routes(&gw).await;
        if v["reload"]["ok"] == false {
            break v;
        }
        assert!(std::time::Instant::now() < deadline, "the bad write was never noticed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let errors = view["reload"]["errors"].to_string();
    assert!(errors.contains("unknown field `bogus`"), "{errors}");
    assert_eq!(view["generation"], before["generation"], "a refused file publishes nothing");
    assert_eq!(view["routes"][0]["variants"][1]["weight"], 10.0);
    assert_eq!(get(&gw.url("/v2/models/canary/ready")).await.status, StatusCode::OK);

    // Every semantic error is listed at once, too.
    std::fs::write(gw.routes_file(), routes("250").replace("stable: keep-a", "stable: v0")).unwrap();
    let started = std::time::Instant::now();
    loop {
        let v = admin_routes(&gw).await;
        let errors = v["reload"]["errors"].to_string();
        if errors.contains("v0") {
            assert!(errors.contains("must be a percentage between 0 and 100, got 250"), "{errors}");
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(10));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // A valid file applies, within 2 s of the write.
    std::fs::write(gw.routes_file(), routes("40")).unwrap();
    let written = std::time::Instant::now();
    loop {
        let v = admin_routes(&gw).await;
        if v["routes"][0]["variants"][1]["weight"] == 40.0 {
            assert_eq!(v["reload"]["ok"], true);
            assert_eq!(v["reload"]["errors"], json!([]));
            break;
        }
        assert!(written.elapsed() < Duration::from_secs(2), "not applied 2 s after the write: {v}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    println!("valid routes.yaml applied {:?} after the write", written.elapsed());
    // The models did not change, so they were reused: the very same worker threads serve.
    assert_eq!(worker_tids(), workers_before);
}

/// Thread ids of this process's ONNX workers, by name.
fn worker_tids() -> Vec<(String, String)> {
    let mut v: Vec<(String, String)> = std::fs::read_dir("/proc/self/task")
        .unwrap()
        .filter_map(|t| {
            let t = t.ok()?;
            let name = std::fs::read_to_string(t.path().join("comm")).ok()?.trim().to_string();
            name.starts_with("onnx-keep-").then(|| (name, t.file_name().to_string_lossy().to_string()))
        })
        .collect();
    v.sort();
    v
}

fn threads() -> Vec<String> {
    std::fs::read_dir("/proc/self/task")
        .unwrap()
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
        .map(|s| s.trim().to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recreate_has_a_bounded_gap_of_503s_and_blue_green_has_none() {
    // Backend names of their own: the test looks for their worker threads, and tests run side by side.
    let routes = |backend: &str| {
        format!(
            "{}routes:\n  - model: diabetes\n    strategy:\n      recreate: {{backend: {backend}}}\n  - model: bg\n    strategy:\n      blue_green: {{active: v1, preview: v2}}\n",
            backends().replace("name: d1", "name: rc-old").replace("name: d2", "name: rc-new")
        )
    };
    let gw = Gateway::start(&routes("rc-old")).await;
    let diabetes = {
        let e = &expected_outputs()["models"]["diabetes-v1"];
        let mut input = e["inputs"]["features"].clone();
        input["name"] = json!("features");
        json!({ "inputs": [input] })
    };
    // Recreate under load.
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let (url, stop, body) = (gw.url("/v2/models/diabetes/infer"), stop.clone(), diabetes.clone());
        tasks.push(tokio::spawn(async move {
            let (mut ok, mut gap) = (0, 0);
            while !stop.load(Ordering::SeqCst) {
                let a = post_json(&url, &body).await;
                match a.status {
                    StatusCode::OK => ok += 1,
                    StatusCode::SERVICE_UNAVAILABLE => {
                        assert!(a.headers.contains_key("retry-after"));
                        assert!(a.error().contains("is being replaced (recreate)"), "{}", a.error());
                        gap += 1;
                    }
                    other => panic!("unexpected {other}: {:?}", a.body),
                }
            }
            (ok, gap)
        }));
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(threads().iter().any(|t| t == "onnx-rc-old-0"));
    // Hold the current table, as a slow in-flight request would: the old model cannot be
    // unloaded until it is let go, so the gap stays open for as long as the test needs.
    let held = gw.controller.table().load();
    std::fs::write(gw.routes_file(), routes("rc-new")).unwrap();
    let controller = gw.controller.clone();
    let reload = tokio::spawn(async move { controller.reload_file().await });
    while gw.controller.table().load().model("diabetes").and_then(|r| r.unavailable.clone()).is_none() {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let a = post_json(&gw.url("/v2/models/diabetes/infer"), &diabetes).await;
    assert_eq!(a.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(a.headers["retry-after"], "1");
    let names = threads();
    assert!(names.iter().any(|t| t == "onnx-rc-old-0"), "the old model serves its in-flight requests to the end");
    assert!(!names.iter().any(|t| t == "onnx-rc-new-0"), "the new model is not loaded while the old one is: one copy");
    drop(held);
    reload.await.unwrap().unwrap();
    // A new thread names itself once it first runs: on a busy machine that can trail the
    // publish, so wait for the names (bounded) rather than read them once.
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut names = threads();
    while !names.iter().any(|t| t == "onnx-rc-new-0") || names.iter().any(|t| t == "onnx-rc-old-0") {
        assert!(Instant::now() < deadline, "the new model serves and the old one is unloaded: {names:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
        names = threads();
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    stop.store(true, Ordering::SeqCst);
    let (mut ok, mut gap) = (0, 0);
    for t in tasks {
        let (o, g) = t.await.unwrap();
        ok += o;
        gap += g;
    }
    let view = admin_routes(&gw).await;
    let gap_ms = view["routes"][0]["status"]["last_gap"].as_f64().expect("the gap is reported");
    assert!(gap > 0, "requests in the gap get 503 ({ok} ok)");
    assert!(gap < ok, "the gap is short next to the serving time: {gap} 503s, {ok} ok");
    assert_eq!(view["routes"][0]["variants"][0]["name"], "rc-new");
    println!("recreate: gap {gap_ms:.1} ms, {gap} requests answered 503, {ok} answered 200");

    // Blue-green switches under load: no gap at all.
    let stop = Arc::new(AtomicBool::new(false));
    let clients = load(gw.url("/v2/models/bg/infer"), 4, stop.clone());
    for _ in 0..20 {
        let a = gw.admin_post("/admin/routes/bg/switch", "").await;
        assert_eq!(a.status, StatusCode::OK);
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    stop.store(true, Ordering::SeqCst);
    let mut sent = 0;
    for c in clients {
        let (s, bad) = c.await.unwrap();
        sent += s;
        assert!(bad.is_empty(), "blue-green switch answered {bad:?}");
    }
    assert!(sent > 20);
}

#[tokio::test]
async fn blue_green_preview_is_reachable_and_the_old_colour_is_scaled_down_after_the_delay() {
    let gw = Gateway::start(&format!(
        "{}routes:\n  - model: bg\n    strategy:\n      blue_green: {{active: v1, preview: v2, scale_down_delay: 300ms}}\n",
        backends()
    ))
    .await;
    for _ in 0..10 {
        assert_eq!(variant(&get(&gw.url("/v2/models/bg/ready")).await), "v1");
    }
    // Pins need the admin token under the default policy; the test's reads carry it.
    let pinned = |path: &'static str| {
        let url = gw.url(path);
        async move { send(Method::GET, &url, "", &[PIN_AUTH]).await }
    };
    assert_eq!(variant(&pinned("/v2/models/bg/versions/v2/ready").await), "v2", "preview reachable by version");
    let a = gw.admin_post("/admin/routes/bg/promote", "").await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(variant(&get(&gw.url("/v2/models/bg/ready")).await), "v2");
    assert_eq!(variant(&pinned("/v2/models/bg/versions/v1/ready").await), "v1", "old colour warm");
    // Roll back while warm: instant, and back on v1.
    let a = gw.admin_post("/admin/routes/bg/rollback", "").await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(variant(&get(&gw.url("/v2/models/bg/ready")).await), "v1");
    // After scale_down_delay the colour not serving is unloaded.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let v = admin_routes(&gw).await;
        if v["routes"][0]["variants"].as_array().unwrap().len() == 1 {
            assert_eq!(v["routes"][0]["status"]["scaled_down"], "v2");
            break;
        }
        assert!(std::time::Instant::now() < deadline, "never scaled down: {v}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(pinned("/v2/models/bg/versions/v2/ready").await.status, StatusCode::NOT_FOUND);
    // Switching again loads it back.
    assert_eq!(gw.admin_post("/admin/routes/bg/switch", "").await.status, StatusCode::OK);
    assert_eq!(variant(&get(&gw.url("/v2/models/bg/ready")).await), "v2");
}

#[tokio::test]
async fn admin_mutations_refuse_what_does_not_fit() {
    let gw = Gateway::start(&sticky_routes()).await;
    let admin = gw.admin;
    let post = move |path: &'static str, body: &'static str| async move {
        send(
            Method::POST,
            &format!("http://{admin}{path}"),
            body,
            &[("authorization", &format!("Bearer {ADMIN_TOKEN}"))],
        )
        .await
    };
    let a = post("/admin/routes/nope/weight", r#"{"weight": 5}"#).await;
    assert_eq!(a.status, StatusCode::NOT_FOUND);
    assert_eq!(a.error(), "unknown route \"nope\"; routes: canary, ab");
    let a = post("/admin/routes/canary/weight", r#"{"weight": 150}"#).await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST);
    let a = post("/admin/routes/canary/weight", r#"{"wait": 5}"#).await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST);
    assert!(a.error().starts_with("invalid JSON body"), "{}", a.error());
    let a = post("/admin/routes/ab/weight", r#"{"weight": 5}"#).await;
    assert_eq!(a.status, StatusCode::CONFLICT);
    let a = post("/admin/routes/canary/switch", "").await;
    assert_eq!(a.status, StatusCode::CONFLICT);
    let a = post("/admin/routes/ab/promote", "").await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST);
    assert!(a.error().contains("arms: v1, v2"), "{}", a.error());
    // A/B promote sends every user to the winner; rollback restores the split.
    assert_eq!(post("/admin/routes/ab/promote", r#"{"variant": "v2"}"#).await.status, StatusCode::OK);
    let counts = count_variants(&gw.url("/v2/models/ab/ready"), 200, |_| vec![]).await;
    assert_eq!(counts.get("v2"), Some(&200));
    assert_eq!(post("/admin/routes/ab/rollback", "").await.status, StatusCode::OK);
    let counts = count_variants(&gw.url("/v2/models/ab/ready"), 400, |_| vec![]).await;
    assert!(counts.get("v1").copied().unwrap_or(0) > 100, "{counts:?}");
    // Canary promote and rollback.
    assert_eq!(post("/admin/routes/canary/promote", "").await.status, StatusCode::OK);
    let v = admin_routes(&gw).await;
    assert_eq!(v["routes"][0]["variants"][1]["weight"], 100.0);
    assert_eq!(v["routes"][0]["status"]["phase"], "promoted");
    assert_eq!(post("/admin/routes/canary/rollback", "").await.status, StatusCode::OK);
    let v = admin_routes(&gw).await;
    assert_eq!(v["routes"][0]["variants"][1]["weight"], 0.0);
    assert_eq!(v["routes"][0]["status"]["phase"], "rolled_back");
}

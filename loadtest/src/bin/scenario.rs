//! `scenario NAME`: runs `loadtest/scenarios/NAME.yaml` end to end — starts a gateway on free
//! loopback ports, drives the load, applies the scenario's timed actions, prints the timeline of
//! the gateway's decisions, and exits non-zero unless the expected outcome happened.
//! `SCENARIO_HOLD=SECONDS` keeps the gateway (and its console) up that long after the outcome.

use anyhow::{bail, Context};
use serde::Deserialize;
use serde_json::Value;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const TOKEN: &str = "scenario-admin-token";

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Scenario {
    description: String,
    /// routes.yaml text; `{models}` is replaced by the checkout's models/ folder.
    routes: String,
    load: loadtest::Args,
    #[serde(default)]
    actions: Vec<Action>,
    expect: Expect,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Action {
    /// When, from the start of the load.
    at: String,
    /// `POST /admin/...` on the admin API.
    admin: Option<String>,
    /// New routes.yaml text, written over the served file.
    routes: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Expect {
    route: String,
    phase: Option<String>,
    winner: Option<String>,
    /// The variant serving all traffic at the end.
    serving: Option<String>,
    /// Highest share of client requests answered with anything but 200, 503 excepted if
    /// `allow_503` (a recreate's gap).
    max_client_error_rate: Option<f64>,
    #[serde(default)]
    allow_503: bool,
    #[serde(default)]
    gap_reported: bool,
}

struct Gateway {
    child: Child,
    addr: String,
    admin: String,
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_gateway(bin: &Path, routes: &Path, state: &Path) -> anyhow::Result<Gateway> {
    let mut child = Command::new(bin)
        .args(["serve", "--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0", "--config"])
        .arg(routes)
        .arg("--state-dir")
        .arg(state)
        .env("MODELGATE_ADMIN_TOKEN", TOKEN)
        .env("MODELGATE_FEEDBACK_KEY", "scenario")
        .env("RUST_LOG", "error")
        .stdout(Stdio::piped())
        .spawn()
        .with_context(|| format!("cannot start {} (run `make build` first)", bin.display()))?;
    let mut line = String::new();
    BufReader::new(child.stdout.take().context("no stdout")?).read_line(&mut line)?;
    let rest = line.trim().strip_prefix("modelgate: listening on http://").context("gateway did not start")?;
    let (addr, admin) = rest.split_once(" (admin http://").context("no admin address")?;
    Ok(Gateway { child, addr: addr.to_string(), admin: admin.trim_end_matches(')').to_string() })
}

async fn admin(gw_admin: &str, method: http::Method, path: &str) -> anyhow::Result<Value> {
    use http_body_util::{BodyExt, Full};
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<Full<bytes::Bytes>>();
    let req = http::Request::builder()
        .method(method)
        .uri(format!("http://{gw_admin}{path}"))
        .header("authorization", format!("Bearer {TOKEN}"))
        .body(Full::new(bytes::Bytes::new()))?;
    let resp = client.request(req).await?;
    let body = resp.into_body().collect().await?.to_bytes();
    Ok(serde_json::from_slice(&body).unwrap_or(Value::Null))
}

fn route<'a>(view: &'a Value, name: &str) -> Option<&'a Value> {
    view["routes"].as_array()?.iter().find(|r| r["name"] == name)
}

/// `SCENARIO_HOLD=SECONDS`: keep the gateway up that long after the outcome is known.
fn hold() -> anyhow::Result<Option<u64>> {
    match std::env::var("SCENARIO_HOLD") {
        Err(_) => Ok(None),
        Ok(v) => v.trim().parse().map(Some).with_context(|| format!("SCENARIO_HOLD must be whole seconds, got {v:?}")),
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let name = std::env::args().nth(1).context("usage: scenario NAME (a file in loadtest/scenarios/)")?;
    hold()?;
    let file = PathBuf::from("loadtest/scenarios").join(format!("{name}.yaml"));
    let text = std::fs::read_to_string(&file)
        .with_context(|| format!("no scenario {} (run from the checkout)", file.display()))?;
    let scenario: Scenario =
        serde_yaml_ng::from_str(&text).with_context(|| format!("{} is not a scenario", file.display()))?;
    let models = std::fs::canonicalize("models").context("run from the checkout: models/ not found")?;
    let fill = |t: &str| t.replace("{models}", &models.display().to_string());
    let dir = std::env::temp_dir().join(format!("modelgate-scenario-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let routes_file = dir.join("routes.yaml");
    std::fs::write(&routes_file, fill(&scenario.routes))?;
    let bin = std::env::current_exe()?.with_file_name("modelgate");
    let gw = start_gateway(&bin, &routes_file, &dir.join("state"))?;
    println!("scenario {name}: {}", scenario.description);
    println!("gateway http://{} (admin http://{})", gw.addr, gw.admin);

    let started = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    // The timeline: the gateway's decisions as they happen; stop the load once the expected
    // phase is reached (and a second more has shown traffic after it).
    let timeline = {
        let (admin_addr, stop, route_name, phase) =
            (gw.admin.clone(), stop.clone(), scenario.expect.route.clone(), scenario.expect.phase.clone());
        tokio::spawn(async move {
            let mut since = 0;
            let mut reached: Option<Instant> = None;
            while !stop.load(Ordering::Relaxed) {
                tokio::time::sleep(Duration::from_millis(200)).await;
                if let Ok(v) = admin(&admin_addr, http::Method::GET, &format!("/admin/events?since={since}")).await {
                    for e in v["events"].as_array().into_iter().flatten() {
                        since = e["seq"].as_u64().unwrap_or(since);
                        println!(
                            "[{:>6.1}s] {:<18} {:<15} {}",
                            started.elapsed().as_secs_f64(),
                            e["route"].as_str().unwrap_or(""),
                            e["kind"].as_str().unwrap_or(""),
                            e["message"].as_str().unwrap_or("")
                        );
                    }
                }
                if let (Some(p), None) = (&phase, reached) {
                    if let Ok(v) = admin(&admin_addr, http::Method::GET, "/admin/routes").await {
                        if route(&v, &route_name).is_some_and(|r| r["status"]["phase"] == p.as_str()) {
                            reached = Some(Instant::now());
                        }
                    }
                }
                if reached.is_some_and(|t| t.elapsed() > Duration::from_secs(1)) {
                    stop.store(true, Ordering::Relaxed);
                }
            }
        })
    };
    let actions = {
        let (admin_addr, routes_file) = (gw.admin.clone(), routes_file.clone());
        let todo: Vec<(Duration, Option<String>, Option<String>)> = scenario
            .actions
            .iter()
            .map(|a| {
                Ok((
                    loadtest::parse_duration(&a.at).map_err(anyhow::Error::msg)?,
                    a.admin.clone(),
                    a.routes.as_deref().map(fill),
                ))
            })
            .collect::<anyhow::Result<_>>()?;
        tokio::spawn(async move {
            for (at, post, routes) in todo {
                tokio::time::sleep_until((started + at).into()).await;
                if let Some(path) = post {
                    let path = path.trim_start_matches("POST ").to_string();
                    let r = admin(&admin_addr, http::Method::POST, &path).await;
                    println!(
                        "[{:>6.1}s] action POST {path}: {}",
                        started.elapsed().as_secs_f64(),
                        r.map(|v| v.to_string()).unwrap_or_else(|e| e.to_string())
                    );
                }
                if let Some(text) = routes {
                    let _ = std::fs::write(&routes_file, text);
                    println!("[{:>6.1}s] action: routes.yaml rewritten", started.elapsed().as_secs_f64());
                }
            }
        })
    };
    let mut load = scenario.load;
    load.url = format!("http://{}", gw.addr);
    load.quiet = true;
    let report = loadtest::run_until(load, stop.clone()).await?;
    stop.store(true, Ordering::Relaxed);
    let _ = timeline.await;
    actions.abort();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let view = admin(&gw.admin, http::Method::GET, "/admin/routes").await?;
    let r = route(&view, &scenario.expect.route).cloned().unwrap_or(Value::Null);
    println!(
        "load: {} requests, {:.0} req/s, p99 {} ms, statuses {}, variants {}",
        report["requests"],
        report["requests_per_second"].as_f64().unwrap_or(0.0),
        report["latency_ms"]["p99"],
        report["statuses"],
        report["variants"]
    );
    println!(
        "final: {}",
        serde_json::json!({"phase": r["status"]["phase"], "variants": r["variants"], "last_gap_ms": r["status"]["last_gap"]})
    );

    let mut failures = Vec::new();
    let e = &scenario.expect;
    if let Some(p) = &e.phase {
        if r["status"]["phase"] != p.as_str() {
            failures.push(format!("phase is {}, expected {p}", r["status"]["phase"]));
        }
    }
    if let Some(w) = &e.winner {
        if r["status"]["winner"] != w.as_str() {
            failures.push(format!("winner is {}, expected {w}", r["status"]["winner"]));
        }
    }
    if let Some(s) = &e.serving {
        let serving: Vec<&str> = r["variants"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|v| v["weight"].as_f64() == Some(100.0))
            .filter_map(|v| v["name"].as_str())
            .collect();
        if serving != [s.as_str()] {
            failures.push(format!("serving {serving:?}, expected {s}"));
        }
    }
    if let Some(max) = e.max_client_error_rate {
        let total = report["requests"].as_f64().unwrap_or(0.0);
        let bad: f64 = report["statuses"]
            .as_object()
            .into_iter()
            .flatten()
            .filter(|(code, _)| *code != "200" && !(e.allow_503 && *code == "503"))
            .map(|(_, n)| n.as_f64().unwrap_or(0.0))
            .sum::<f64>()
            + report["transport_errors"].as_f64().unwrap_or(0.0);
        if total == 0.0 || bad / total > max {
            failures.push(format!("{bad} of {total} client requests failed (limit {max})"));
        }
    }
    if e.gap_reported && r["status"]["last_gap"].is_null() {
        failures.push("no recreate gap reported".into());
    }
    if let Some(secs) = hold()? {
        // The gateway stays up (no load) so its console can be looked at, e.g. by
        // scripts/console-scenario.sh; the outcome above is already decided.
        println!("holding the gateway for {secs} s: console http://{}/ui/ (admin token {TOKEN})", gw.admin);
        tokio::time::sleep(Duration::from_secs(secs)).await;
    }
    drop(gw);
    let _ = std::fs::remove_dir_all(&dir);
    if failures.is_empty() {
        println!("scenario {name}: PASSED");
        Ok(())
    } else {
        bail!("scenario {name}: FAILED: {}", failures.join("; "))
    }
}

//! Models from an MLflow Model Registry (`onnx.registry`), against a real MLflow tracking server
//! (sqlite backend, artifacts served by it) from the CT loop's environment (`make ctenv`,
//! .venv-ct/), and a real `modelgate serve`: a new version under the alias is fetched and starts
//! a canary; an artifact that does not fit the route, a registry that stops answering and one
//! that cannot be reached at start are errors naming the file or URL, and the running table stays.

mod support;

use serde_json::Value;
use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use support::process::*;
use support::*;

const ADMIN: (&str, &str) = ("authorization", "Bearer cli-admin-token");

fn venv(bin: &str) -> PathBuf {
    let p = root().join(".venv-ct/bin").join(bin);
    assert!(p.exists(), "{} is missing: run `make ctenv` (make test does)", p.display());
    p
}

/// A real MLflow tracking server on 127.0.0.1, port chosen by the OS; killed when dropped.
struct Mlflow {
    child: Child,
    url: String,
    _dir: tempfile::TempDir,
}

impl Mlflow {
    fn start() -> Mlflow {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("mlflow.log");
        let mut child = Command::new(venv("mlflow"))
            .args(["server", "--host", "127.0.0.1", "--port", "0", "--workers", "1", "--backend-store-uri"])
            .arg(format!("sqlite:///{}/mlflow.db", dir.path().display()))
            .arg("--artifacts-destination")
            .arg(dir.path().join("artifacts"))
            .current_dir(dir.path())
            .process_group(0) // the server and its uvicorn workers go together (see stop)
            .stdout(std::fs::File::create(&log).unwrap())
            .stderr(Stdio::from(std::fs::File::options().append(true).open(&log).unwrap()))
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(240);
        loop {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            if let Some(rest) = text.split("Uvicorn running on ").nth(1) {
                let url = rest.split_whitespace().next().unwrap().trim_end_matches('/').to_string();
                return Mlflow { child, url, _dir: dir };
            }
            assert!(child.try_wait().unwrap().is_none(), "mlflow server exited:\n{text}");
            assert!(Instant::now() < deadline, "mlflow server did not start:\n{text}");
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Logs `file` as a new version of `model` and points `aliases` at it; the version.
    fn register(&self, model: &str, file: &str, aliases: &[&str]) -> String {
        let mut cmd = Command::new(venv("python"));
        cmd.arg(root().join("scripts/ct_register.py"))
            .args(["--mlflow", &self.url, "--model", model, "--file"])
            .arg(root().join(file));
        for a in aliases {
            cmd.args(["--alias", a]);
        }
        let out = cmd.output().unwrap();
        assert!(out.status.success(), "ct_register.py: {}", String::from_utf8_lossy(&out.stderr));
        // MLflow prints links to the run first; the version is the last line.
        String::from_utf8(out.stdout).unwrap().lines().last().unwrap_or("").trim().to_string()
    }
}

impl Mlflow {
    /// Kills the server's process group (the `mlflow server` process and its workers).
    fn stop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = Command::new("kill").args(["-s", "KILL", "--", &format!("-{}", self.child.id())]).status();
            let _ = self.child.wait();
        }
    }
}

impl Drop for Mlflow {
    fn drop(&mut self) {
        self.stop();
    }
}

fn routes(dir: &Path, mlflow: &str) -> String {
    let profile = root().join("models/breast-cancer.profile.json");
    let reg = |alias: &str| {
        format!(
            "{{mlflow: \"{mlflow}\", model: bc, alias: {alias}, poll: 200ms, cache: {}}}",
            dir.join("cache").display()
        )
    };
    format!(
        "backends:\n  - name: production\n    onnx: {{registry: {}, profile: \"{}\"}}\n  - name: challenger\n    onnx: \
         {{registry: {}}}\nroutes:\n  - model: bc\n    strategy:\n      canary:\n        stable: production\n        \
         canary: challenger\n        steps: [{{weight: 25, pause: 1h}}]\n",
        reg("production"),
        profile.display(),
        reg("challenger")
    )
}

fn admin_get(rt: &tokio::runtime::Runtime, admin: &str, path: &str) -> Value {
    rt.block_on(async { send(http::Method::GET, &format!("http://{admin}{path}"), "", &[ADMIN]).await.json() })
}

fn route(rt: &tokio::runtime::Runtime, admin: &str) -> Value {
    admin_get(rt, admin, "/admin/routes")["routes"][0].clone()
}

/// The first event of `kind` whose message contains `needle`, waiting up to `limit`.
fn wait_event(rt: &tokio::runtime::Runtime, admin: &str, kind: &str, needle: &str, limit: Duration) -> Value {
    let deadline = Instant::now() + limit;
    loop {
        let events = admin_get(rt, admin, "/admin/events")["events"].as_array().cloned().unwrap_or_default();
        if let Some(e) =
            events.iter().find(|e| e["kind"] == kind && e["message"].as_str().unwrap_or("").contains(needle))
        {
            return e.clone();
        }
        assert!(
            Instant::now() < deadline,
            "no {kind} event containing {needle:?} within {limit:?}; events: {events:#?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn sha256(file: &str) -> String {
    use sha2::Digest;
    let bytes = std::fs::read(root().join(file)).unwrap();
    sha2::Sha256::digest(&bytes).iter().map(|b| format!("{b:02x}")).collect()
}

#[test]
fn a_new_version_under_the_alias_starts_a_canary_and_bad_artifacts_or_a_dead_registry_change_nothing() {
    let mut mlflow = Mlflow::start();
    assert_eq!(mlflow.register("bc", "models/breast-cancer-v1.onnx", &["production", "challenger"]), "1");
    let dir = tempfile::tempdir().unwrap();
    let config = write(&dir, "routes.yaml", &routes(dir.path(), &mlflow.url));
    let (_gateway, addr, admin) = spawn_serve_admin(config.to_str().unwrap());
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let infer = |rt: &tokio::runtime::Runtime| {
        rt.block_on(async { post_json(&format!("http://{addr}/v2/models/bc/infer"), &body()).await.status })
    };
    assert_eq!(infer(&rt), http::StatusCode::OK);
    let first = route(&rt, &admin)["revision"].as_str().unwrap().to_string();

    // Version 2 under `challenger`: fetched, verified, applied as a new revision; its canary starts.
    assert_eq!(mlflow.register("bc", "models/breast-cancer-v2.onnx", &["challenger"]), "2");
    let fetched =
        wait_event(&rt, &admin, "registry_fetched", "alias \"challenger\" is version 2", Duration::from_secs(60));
    assert_eq!(fetched["details"]["pointer"]["sha256"], sha256("models/breast-cancer-v2.onnx"));
    let deadline = Instant::now() + Duration::from_secs(30);
    let second = loop {
        let r = route(&rt, &admin);
        if r["revision"] != first.as_str() {
            break r;
        }
        assert!(Instant::now() < deadline, "no new revision after version 2: {r:#}");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(second["status"]["phase"], "progressing", "{second:#}");
    let canary = second["variants"].as_array().unwrap().iter().find(|v| v["name"] == "challenger").unwrap().clone();
    assert_eq!(canary["weight"], 25.0, "{second:#}");
    let revision = second["revision"].clone();
    assert_eq!(infer(&rt), http::StatusCode::OK);

    // An artifact whose inputs do not fit the route (the diabetes regression: FP64, 10 features):
    // refused naming the artifact's URL and the file, the running table stays.
    assert_eq!(mlflow.register("bc", "models/diabetes-v1.onnx", &["challenger"]), "3");
    let refused = wait_event(&rt, &admin, "registry_failed", "does not fit", Duration::from_secs(60));
    let message = refused["message"].as_str().unwrap();
    assert!(message.starts_with(&format!("{}/api/2.0/mlflow-artifacts/artifacts/", mlflow.url)), "{message}");
    assert!(message.contains("model.onnx") && message.contains("inputs"), "{message}");
    assert!(message.contains("the running table stays"), "{message}");
    assert_eq!(route(&rt, &admin)["revision"], revision);
    assert_eq!(infer(&rt), http::StatusCode::OK);

    // The registry goes away: an error naming its URL, the running table stays.
    mlflow.stop();
    let down = wait_event(&rt, &admin, "registry_failed", "unreachable", Duration::from_secs(30));
    assert!(down["message"].as_str().unwrap().starts_with(&mlflow.url), "{down:#}");
    assert_eq!(route(&rt, &admin)["revision"], revision);
    assert_eq!(infer(&rt), http::StatusCode::OK);
}

/// `modelgate serve` on `config`, which must fail: its stderr.
fn serve_fails(config: &Path, state: &Path) -> String {
    let mut child = modelgate()
        .args(["serve", "--config"])
        .arg(config)
        .args(["--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0", "--state-dir"])
        .arg(state)
        .env("MODELGATE_FEEDBACK_KEY", "k")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let mut served = Served(child);
    let status = wait_exit(&mut served, Duration::from_secs(60), "serve did not exit");
    assert!(!status.success());
    BufReader::new(stderr).lines().map_while(Result::ok).collect::<Vec<_>>().join("\n")
}

#[test]
fn a_registry_that_cannot_be_reached_at_start_is_an_error_naming_its_url() {
    let dir = tempfile::tempdir().unwrap();
    // Port 1 on loopback: nothing listens there, the connection is refused at once.
    let config = write(&dir, "routes.yaml", &routes(dir.path(), "http://127.0.0.1:1"));
    let text = serve_fails(&config, &dir.path().join("state"));
    assert!(
        text.contains("http://127.0.0.1:1/api/2.0/mlflow/registered-models/alias?name=bc&alias=production"),
        "{text}"
    );
    assert!(text.contains("unreachable"), "{text}");
    assert!(text.contains("backends[0].onnx.registry"), "{text}");
}

#[test]
fn a_registry_that_answers_garbage_at_start_is_an_error_naming_its_url() {
    // An HTTP server answering every request with JSON of its own, not MLflow's.
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    let echo = rt.block_on(Upstream::start(Duration::ZERO));
    let dir = tempfile::tempdir().unwrap();
    let config = write(&dir, "routes.yaml", &routes(dir.path(), &echo.url()));
    let text = serve_fails(&config, &dir.path().join("state"));
    let url = format!("{}/api/2.0/mlflow/registered-models/alias?name=bc&alias=production", echo.url());
    assert!(text.contains(&format!("{url}: not the JSON MLflow answers (missing field `model_version`")), "{text}");
    assert!(text.contains("backends[0].onnx.registry"), "{text}");
}

//! The `modelgate` binary as an operator or a CI pipeline runs it: `validate`, the CLI over the
//! admin API, the admin listener's rules, and several `serve` processes sharing one fleet's keys.

mod support;

use support::process::*;
use support::*;

const BAD: &str = r#"
backends:
  - name: bc
    onnx: {path: models/breast-cancer-v1.onnx, sessions: 0}
  - name: bc
    onnx: {path: models/missing.onnx}
  - name: up
    upstream: {url: "localhost:9000"}
routes:
  - model: risk
    backend: risk-v3
  - path_prefix: /x/
    backend: bc
"#;

fn expect_every_error(stderr: &str, file: &std::path::Path) {
    let f = file.display();
    for line in [
        format!("{f}: 6 errors"),
        format!("{f}: backends[0].onnx.sessions: must be between 1 and 64, got 0"),
        format!("{f}: backends[1].name: duplicate backend name \"bc\" (first at backends[0])"),
        format!("{f}: backends[1].onnx.path: cannot open model file"),
        format!("{f}: backends[2].upstream.url: invalid upstream URL \"localhost:9000\""),
        format!("{f}: routes[0].backend: unknown backend \"risk-v3\" (backends: bc, bc, up)"),
        format!("{f}: routes[1].backend: backend \"bc\" is an ONNX model; path_prefix routes need upstream backends"),
    ] {
        assert!(stderr.contains(&line), "missing {line:?} in:\n{stderr}");
    }
}

#[test]
fn validate_accepts_the_demo_and_loads_every_model() {
    let out = modelgate().args(["validate", "routes.yaml"]).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("routes.yaml: ok (4 backends, 6 routes)"), "{stdout}");
}

#[test]
fn validate_and_serve_refuse_a_bad_file_listing_every_error() {
    let dir = tempfile::tempdir().unwrap();
    let file = write(&dir, "routes.yaml", &BAD.replace("models/", &format!("{}/models/", root().display())));
    for args in [
        vec!["validate", file.to_str().unwrap()],
        vec!["serve", "--config", file.to_str().unwrap(), "--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"],
    ] {
        let out = modelgate().args(&args).output().unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        expect_every_error(&stderr, &file);
        assert!(!String::from_utf8_lossy(&out.stdout).contains("listening"), "{args:?} must not serve");
    }
}

#[test]
fn a_model_that_onnx_runtime_cannot_load_is_refused_with_its_place() {
    let dir = tempfile::tempdir().unwrap();
    write(&dir, "broken.onnx", "this is not a model");
    let file = write(
        &dir,
        "routes.yaml",
        "backends:\n  - name: b\n    onnx: {path: broken.onnx}\nroutes:\n  - model: m\n    backend: b\n",
    );
    let out = modelgate().args(["validate", file.to_str().unwrap()]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("backends[0].onnx.path: cannot load model"), "{stderr}");
    assert!(stderr.contains("broken.onnx"), "{stderr}");
}

#[test]
fn a_missing_onnx_runtime_says_which_command_fixes_it() {
    let out = modelgate()
        .args(["validate", "routes.yaml", "--ort-library", "/nonexistent/libonnxruntime.so"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("ONNX Runtime library not found at /nonexistent/libonnxruntime.so"), "{stderr}");
    assert!(stderr.contains("Run `make ort`"), "{stderr}");
    // ORT_DYLIB_PATH is honoured the same way.
    let out =
        modelgate().args(["validate", "routes.yaml"]).env("ORT_DYLIB_PATH", "/elsewhere/lib.so").output().unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("not found at /elsewhere/lib.so"));
}

#[test]
fn two_gateway_processes_put_every_sticky_key_on_the_same_variant() {
    let (mut a, addr_a) = spawn_serve("routes.yaml");
    let (mut b, addr_b) = spawn_serve("routes.yaml");
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let mut on_canary = 0;
        for i in 0..1000 {
            let key = format!("user-{i}");
            let va = send(
                http::Method::GET,
                &format!("http://{addr_a}/v2/models/breast-cancer/ready"),
                "",
                &[("x-user-id", &key)],
            )
            .await;
            let vb = send(
                http::Method::GET,
                &format!("http://{addr_b}/v2/models/breast-cancer/ready"),
                "",
                &[("x-user-id", &key)],
            )
            .await;
            assert_eq!(va.headers["x-modelgate-variant"], vb.headers["x-modelgate-variant"], "key {key}");
            on_canary += usize::from(va.headers["x-modelgate-variant"] == "bc-v2");
        }
        assert!((60..140).contains(&on_canary), "{on_canary} of 1000 keys on the 10% canary");
    });
    for c in [&mut a, &mut b] {
        let _ = c.kill();
        let _ = c.wait();
    }
}

#[test]
fn feedback_posted_to_another_process_goes_to_the_variant_the_first_chose() {
    let (mut a, addr_a, _) = spawn_serve_admin("routes.yaml");
    let (mut b, addr_b, admin_b) = spawn_serve_admin("routes.yaml");
    let holdout: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(root().join("models/breast-cancer-holdout.json")).unwrap())
            .unwrap();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        // (labels scored, predicted right) per variant, as the client saw the answers of A.
        let mut expected: std::collections::HashMap<String, (u64, u64)> = Default::default();
        for (i, s) in holdout["samples"].as_array().unwrap().iter().enumerate().take(120) {
            let body = serde_json::json!({"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 30], "data": s["features"]}]});
            let key = format!("user-{i}");
            let r = send(http::Method::POST, &format!("http://{addr_a}/v2/models/breast-cancer/infer"), body.to_string(), &[("x-user-id", &key)]).await;
            assert_eq!(r.status, http::StatusCode::OK);
            let variant = r.headers["x-modelgate-variant"].to_str().unwrap().to_string();
            let id = r.headers["x-modelgate-request-id"].to_str().unwrap().to_string();
            let truth = s["label"].as_i64().unwrap();
            let right = r.json()["outputs"][0]["data"][0].as_i64() == Some(truth);
            let e = expected.entry(variant.clone()).or_default();
            e.0 += 1;
            e.1 += u64::from(right);
            let fb = post_json(&format!("http://{addr_b}/v2/feedback"), &serde_json::json!({"request_id": id, "label": truth})).await;
            assert_eq!(fb.status, http::StatusCode::OK, "{:?}", fb.body);
            assert_eq!(fb.json()["variant"], variant.as_str(), "B attributes it to the variant A chose");
        }
        assert_eq!(expected.len(), 2, "both variants answered: {expected:?}");
        let stats = get(&format!("http://{admin_b}/admin/stats")).await.json();
        let route = stats["routes"].as_array().unwrap().iter().find(|r| r["route"] == "breast-cancer").unwrap().clone();
        for v in route["variants"].as_array().unwrap() {
            let (n, right) = expected[v["variant"].as_str().unwrap()];
            assert_eq!(v["total"]["requests"], 0, "B answered none of these requests");
            assert_eq!(v["total"]["accuracy_samples"], n);
            // A mean of per-unit cells (Welford moments): equal up to rounding.
            let accuracy = v["total"]["accuracy"].as_f64().unwrap();
            assert!((accuracy - right as f64 / n as f64).abs() < 1e-12, "{v}");
        }
    });
    for c in [&mut a, &mut b] {
        let _ = c.kill();
        let _ = c.wait();
    }
}

#[test]
fn a_gateway_killed_mid_rollout_resumes_the_same_step() {
    let dir = tempfile::tempdir().unwrap();
    let routes = dir.path().join("routes.yaml");
    std::fs::write(
        &routes,
        format!(
            "backends:\n  - name: a\n    onnx: {{path: \"{m}/breast-cancer-v1.onnx\"}}\n  - name: b\n    onnx: {{path: \"{m}/breast-cancer-v2.onnx\"}}\nroutes:\n  - model: risk\n    strategy:\n      canary:\n        stable: a\n        canary: b\n        steps:\n          - {{weight: 10, pause: 1h}}\n          - {{weight: 40, pause: 1h}}\n          - {{weight: 70, pause: 1h}}\n",
            m = root().join("models").display()
        ),
    )
    .unwrap();
    let state = dir.path().join("state");
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let (mut first, _, admin) = spawn_serve_state(routes.to_str().unwrap(), &state);
    let before = rt.block_on(async {
        let auth = [("authorization", "Bearer cli-admin-token")];
        let a = send(http::Method::POST, &format!("http://{admin}/admin/routes/risk/promote"), "", &auth).await;
        assert_eq!(a.status, http::StatusCode::OK, "{:?}", a.body);
        get(&format!("http://{admin}/admin/routes")).await.json()["routes"][0].clone()
    });
    assert_eq!(before["status"]["progress"]["step"], 1);
    assert_eq!(before["variants"][1]["weight"], 40.0);
    // SIGKILL: no chance to save anything on the way out.
    first.kill().unwrap();
    first.wait().unwrap();
    let saved = std::fs::read_to_string(state.join("status.json")).unwrap();
    assert!(serde_json::from_str::<serde_json::Value>(&saved).is_ok(), "the status file is whole: {saved}");

    let (mut second, _, admin) = spawn_serve_state(routes.to_str().unwrap(), &state);
    let after = rt.block_on(async { get(&format!("http://{admin}/admin/routes")).await.json()["routes"][0].clone() });
    assert_eq!(after["status"]["progress"]["step"], 1, "same step after the restart: {after}");
    assert_eq!(
        after["status"]["progress"]["step_started_ms"], before["status"]["progress"]["step_started_ms"],
        "same elapsed time"
    );
    assert_eq!(after["variants"][1]["weight"], 40.0);
    second.kill().unwrap();
    second.wait().unwrap();

    // Another model file for the canary is a new revision: it starts over, and the old status
    // goes to the history. (Changed step weights or thresholds would not: they apply to the
    // running rollout.)
    let text = std::fs::read_to_string(&routes).unwrap();
    std::fs::write(&routes, text.replace("breast-cancer-v2.onnx", "breast-cancer-v1.onnx")).unwrap();
    let (mut third, _, admin) = spawn_serve_state(routes.to_str().unwrap(), &state);
    let fresh = rt.block_on(async { get(&format!("http://{admin}/admin/routes")).await.json()["routes"][0].clone() });
    assert_eq!(fresh["variants"][1]["weight"], 10.0, "{fresh}");
    let history = std::fs::read_to_string(state.join("history.jsonl")).unwrap();
    assert_eq!(history.lines().count(), 1, "{history}");
    third.kill().unwrap();
    third.wait().unwrap();
}

#[test]
fn the_cli_shows_and_changes_rollouts_through_the_admin_api() {
    let (mut gw, _, admin) = spawn_serve_admin("routes.yaml");
    let url = format!("http://{admin}");
    let cli = |args: &[&str], token: Option<&str>| {
        let mut c = modelgate();
        c.args(args).args(["--admin-url", &url]);
        match token {
            Some(t) => c.env("MODELGATE_ADMIN_TOKEN", t),
            None => c.env_remove("MODELGATE_ADMIN_TOKEN"),
        };
        c.output().unwrap()
    };
    let out = cli(&["status"], None);
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{table}");
    assert!(
        table
            .lines()
            .any(|l| l.starts_with("breast-cancer ") && l.contains("canary") && l.contains("bc-v2 canary 10%")),
        "{table}"
    );
    assert!(table.contains("diabetes") && table.contains("recreate"), "{table}");

    let out = cli(&["weight", "breast-cancer", "30"], None);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr)
        .contains("401 Unauthorized: admin changes need `Authorization: Bearer <token>`"));
    let out = cli(&["weight", "breast-cancer", "30"], Some("cli-admin-token"));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("weight breast-cancer: applied (table generation"));
    let out = cli(&["status", "--json"], None);
    let view: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(view["routes"][0]["variants"][1]["weight"], 30.0);
    let out = cli(&["rollback", "nope"], Some("cli-admin-token"));
    assert!(String::from_utf8_lossy(&out.stderr).contains("404 Not Found: unknown route \"nope\""));
    let out = cli(&["rollback", "/remote/"], Some("cli-admin-token"));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("409 Conflict: route \"/remote/\" uses single"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    gw.kill().unwrap();
    gw.wait().unwrap();
    let out = cli(&["status"], None);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("cannot reach the admin API at"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn the_admin_api_is_not_served_beyond_loopback_without_a_token() {
    let out = modelgate()
        .args(["serve", "--config", "routes.yaml", "--listen", "127.0.0.1:0", "--admin-listen", "0.0.0.0:0"])
        .env_remove("MODELGATE_ADMIN_TOKEN")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("refusing to serve the admin API on 0.0.0.0:0 without a token"), "{stderr}");
    assert!(!String::from_utf8_lossy(&out.stdout).contains("listening"));
}

#[test]
fn client_certificates_stand_in_for_the_admin_token_and_bad_tls_files_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let ca = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let (cert, key, client_ca) = (dir.path().join("c.pem"), dir.path().join("k.pem"), dir.path().join("ca.pem"));
    std::fs::write(&cert, ca.cert.pem()).unwrap();
    std::fs::write(&key, ca.signing_key.serialize_pem()).unwrap();
    std::fs::write(&client_ca, ca.cert.pem()).unwrap();
    let (cert, key, client_ca) = (cert.to_str().unwrap(), key.to_str().unwrap(), client_ca.to_str().unwrap());
    let state = dir.path().join("state");
    let serve = |extra: &[&str]| {
        let mut args =
            vec!["serve", "--config", "routes.yaml", "--listen", "127.0.0.1:0", "--admin-listen", "0.0.0.0:0"];
        args.extend_from_slice(&["--state-dir", state.to_str().unwrap()]);
        args.extend_from_slice(extra);
        let mut cmd = modelgate();
        cmd.args(&args).env_remove("MODELGATE_ADMIN_TOKEN");
        cmd
    };
    // TLS without client certificates is not enough beyond loopback.
    let out = serve(&["--admin-tls-cert", cert, "--admin-tls-key", key]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("without a token"));
    // Required client certificates are.
    let child = serve(&["--admin-tls-cert", cert, "--admin-tls-key", key, "--admin-client-ca", client_ca])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut served = Served(child);
    let mut line = String::new();
    std::io::BufRead::read_line(&mut std::io::BufReader::new(served.0.stdout.take().unwrap()), &mut line).unwrap();
    assert!(line.contains("(admin https://0.0.0.0:"), "{line}");
    let port = line.trim().trim_end_matches(')').rsplit(':').next().unwrap().to_string();
    // The CLI reaches it with the CA and a client certificate, and not without the certificate.
    let url = format!("https://localhost:{port}");
    let status = |extra: &[&str]| {
        let mut cmd = modelgate();
        cmd.args(["status", "--json", "--admin-url", &url, "--admin-ca", client_ca]).args(extra);
        cmd.output().unwrap()
    };
    let out = status(&["--admin-cert", cert, "--admin-key", key]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("routes"));
    let out = status(&[]);
    assert_eq!(out.status.code(), Some(2));
    drop(served);
    // A key file that is not a key is named.
    let out = modelgate()
        .args(["serve", "--config", "routes.yaml", "--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"])
        .args(["--tls-cert", cert, "--tls-key", cert])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("cannot serve TLS on the inference listener") && stderr.contains(cert), "{stderr}");
    assert!(stderr.contains("no usable private key"), "{stderr}");
    // `validate` catches it too, naming the file and the setting.
    let routes = dir.path().join("tls-routes.yaml");
    std::fs::write(&routes, format!("server:\n  tls: {{cert: \"{cert}\", key: \"{cert}\"}}\n")).unwrap();
    let out = modelgate().args(["validate", routes.to_str().unwrap()]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("tls-routes.yaml: server.tls") && stderr.contains("no usable private key"), "{stderr}");
}

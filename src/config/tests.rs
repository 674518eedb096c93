use super::*;
use std::io::Write;

fn write_model(dir: &Path, name: &str) {
    std::fs::File::create(dir.join(name)).unwrap().write_all(b"not really onnx").unwrap();
}

fn parse_in(dir: &Path, text: &str) -> Result<Config, ConfigErrors> {
    Config::parse(text, &dir.join("routes.yaml"))
}

fn places(e: &ConfigErrors) -> Vec<String> {
    e.issues.iter().map(|i| i.to_string()).collect()
}

#[test]
fn valid_file_gets_defaults_and_resolves_paths() {
    let dir = tempfile::tempdir().unwrap();
    write_model(dir.path(), "m.onnx");
    let c = parse_in(
        dir.path(),
        r#"
backends:
  - name: m
    onnx: {path: m.onnx, sessions: 2}
  - name: up
    upstream: {url: "http://127.0.0.1:9000/base", request_timeout: 250ms}
routes:
  - model: risk
    backend: m
  - path_prefix: /echo
    backend: up
    rewrite: /
"#,
    )
    .unwrap();
    assert_eq!(c.server, ServerSettings { state_dir: dir.path().join("state"), ..ServerSettings::default() });
    let BackendKind::Onnx(o) = &c.backends[0].kind else { panic!() };
    assert_eq!(o.path, dir.path().join("m.onnx"));
    assert_eq!((o.sessions, o.intra_op_threads), (2, 1));
    let BackendKind::Upstream(u) = &c.backends[1].kind else { panic!() };
    assert_eq!(u.request_timeout, Duration::from_millis(250));
    assert_eq!(c.routes[1].kind, RouteKind::Prefix { prefix: "/echo/".into(), rewrite: Some("/".into()) });
}

#[test]
fn every_error_is_reported_with_its_place() {
    let dir = tempfile::tempdir().unwrap();
    write_model(dir.path(), "m.onnx");
    let e = parse_in(
        dir.path(),
        r#"
server:
  listen: "nowhere"
  request_timeout: soon
backends:
  - name: m
    onnx: {path: m.onnx, sessions: 0}
  - name: m
    onnx: {path: missing.onnx}
  - name: up
    upstream: {url: "ftp://example"}
  - name: "bad name"
    upstream: {url: "http://127.0.0.1:1"}
routes:
  - model: risk
    backend: m
  - model: risk
    backend: risk-v3
  - path_prefix: /v2/models/
    backend: up
  - path_prefix: /x
    backend: m
  - backend: m
"#,
    )
    .unwrap_err();
    let got = places(&e);
    let expect = [
        "server.listen: invalid address \"nowhere\"",
        "server.request_timeout: invalid duration \"soon\"",
        "backends[0].onnx.sessions: must be between 1 and 64, got 0",
        "backends[1].name: duplicate backend name \"m\" (first at backends[0])",
        "backends[1].onnx.path: cannot open model file",
        "backends[2].upstream.url: invalid upstream URL \"ftp://example\": scheme must be http://",
        "backends[3].name: invalid name \"bad name\"",
        "routes[1].backend: unknown backend \"risk-v3\"",
        "routes[1].model: duplicate model \"risk\" (first at routes[0])",
        "routes[2].path_prefix: \"/v2/models/\" overlaps the Open Inference Protocol paths",
        "routes[3].backend: backend \"m\" is an ONNX model; path_prefix routes need upstream backends",
        "routes[4]: missing `model: <name>` or `path_prefix: /<path>/`",
    ];
    for want in expect {
        assert!(got.iter().any(|g| g.starts_with(want)), "missing {want:?} in {got:#?}");
    }
    assert_eq!(got.len(), expect.len(), "{got:#?}");
    let shown = e.to_string();
    assert!(shown.starts_with(&format!("{}: 12 errors", dir.path().join("routes.yaml").display())), "{shown}");
}

#[test]
fn syntax_and_unknown_fields_name_the_line() {
    let dir = tempfile::tempdir().unwrap();
    let e = parse_in(dir.path(), "backends:\n  - name: m\n    onnx: {path: m.onnx, sesions: 2}\n").unwrap_err();
    assert_eq!(e.issues.len(), 1);
    assert!(e.issues[0].place.starts_with("line 3 column"), "{e}");
    assert!(e.issues[0].message.contains("unknown field `sesions`"), "{e}");
    let e = parse_in(dir.path(), "routes: [\n").unwrap_err();
    assert!(e.issues[0].place.starts_with("line "), "{e}");
}

#[test]
fn empty_file_is_a_valid_gateway_with_no_routes() {
    let dir = tempfile::tempdir().unwrap();
    let c = parse_in(dir.path(), "").unwrap();
    assert!(c.routes.is_empty() && c.backends.is_empty());
}

#[test]
fn unreadable_file_is_reported_by_name() {
    let e = Config::load(Path::new("/nonexistent/routes.yaml")).unwrap_err();
    assert!(e.to_string().contains("/nonexistent/routes.yaml: 1 error"), "{e}");
    assert_eq!(e.issues[0].place, "file");
}

#[test]
fn rollout_settings_are_checked_with_their_places() {
    let dir = tempfile::tempdir().unwrap();
    write_model(dir.path(), "m.onnx");
    let e = parse_in(
        dir.path(),
        r#"
backends:
  - name: a
    onnx: {path: m.onnx}
  - name: b
    onnx: {path: m.onnx}
    fault: {error_percent: 120}
routes:
  - model: r
    strategy:
      canary:
        stable: a
        canary: b
        steps: [{weight: 10, pause: soon}, {weight: 50, pause: until_promoted}]
        analysis: {max_error_rate: 2, alpha: 0.7, on_inconclusive: shrug, business: {metric: joy, margin: 0.1}}
  - model: s
    strategy:
      ab_test: {variants: {a: 1, b: 1}, sticky: {header: x-u}, analysis: {metric: conversion, effect: 0}}
webhooks:
  - {url: "ftp://x", secret_env: MODELGATE_SURELY_UNSET_VARIABLE}
"#,
    )
    .unwrap_err();
    let got = places(&e);
    for want in [
        "backends[1].fault.error_percent: must be a percentage between 0 and 100, got 120",
        "routes[0].strategy.canary.steps[0].pause: invalid duration \"soon\"",
        "routes[0].strategy.canary.analysis.max_error_rate: must be a fraction between 0 and 1, got 2",
        "routes[0].strategy.canary.analysis.alpha: must be between 0 and 0.5, got 0.7",
        "routes[0].strategy.canary.analysis.on_inconclusive: \"shrug\" is neither `hold` nor `rollback`",
        "routes[0].strategy.canary.analysis.business.metric: unknown metric \"joy\"",
        "routes[1].strategy.ab_test.analysis.effect: must be above 0",
        "webhooks[0].url: invalid webhook URL \"ftp://x\"",
        "webhooks[0].secret_env: environment variable MODELGATE_SURELY_UNSET_VARIABLE is not set",
    ] {
        assert!(got.iter().any(|g| g.starts_with(want)), "missing {want:?} in {got:#?}");
    }
}

#[test]
fn tls_files_are_resolved_and_checked_with_their_places() {
    let dir = tempfile::tempdir().unwrap();
    for f in ["cert.pem", "key.pem", "ca.pem"] {
        std::fs::write(dir.path().join(f), "pem").unwrap();
    }
    let c = parse_in(
        dir.path(),
        r#"
server:
  tls: {cert: cert.pem, key: key.pem}
  admin_tls: {cert: cert.pem, key: key.pem, client_ca: ca.pem, reload_interval: 1s}
backends:
  - name: up
    upstream: {url: "https://models.internal:8443", ca: ca.pem}
"#,
    )
    .unwrap();
    let tls = c.server.tls.unwrap();
    assert_eq!(
        (tls.cert, tls.client_ca, tls.reload_interval),
        (dir.path().join("cert.pem"), None, Duration::from_secs(10))
    );
    let admin = c.server.admin_tls.unwrap();
    assert_eq!((admin.client_ca, admin.reload_interval), (Some(dir.path().join("ca.pem")), Duration::from_secs(1)));
    let BackendKind::Upstream(u) = &c.backends[0].kind else { panic!() };
    assert_eq!((u.urls[0].scheme_str(), u.ca.clone()), (Some("https"), Some(dir.path().join("ca.pem"))));

    let e = parse_in(
        dir.path(),
        r#"
server:
  tls: {cert: missing.pem, key: key.pem, reload_interval: 0s}
  admin_tls: {cert: cert.pem, key: key.pem, client_ca: nope.pem}
backends:
  - name: up
    upstream: {url: "ftp://x:1", ca: gone.pem}
"#,
    )
    .unwrap_err();
    let all = places(&e).join("\n");
    for expected in [
        "server.tls.cert: cannot open certificate file",
        "server.tls.reload_interval: must be longer than zero",
        "server.admin_tls.client_ca: cannot open CA file",
        "backends[0].upstream.url: invalid upstream URL \"ftp://x:1\": scheme must be http:// or https://",
        "backends[0].upstream.ca: cannot open CA file",
    ] {
        assert!(all.contains(expected), "{expected} not in\n{all}");
    }
}

#[test]
fn the_grpc_listener_is_optional_and_checked_like_the_others() {
    let dir = tempfile::tempdir().unwrap();
    write_model(dir.path(), "m.onnx");
    let with = |server: &str| {
        parse_in(dir.path(), &format!("server:\n{server}\nbackends:\n  - name: m\n    onnx: {{path: m.onnx}}\nroutes:\n  - model: risk\n    backend: m\n"))
    };
    assert_eq!(with("  listen: \"127.0.0.1:8080\"").unwrap().server.grpc_listen, None);
    let c = with("  grpc_listen: \"0.0.0.0:8001\"").unwrap();
    assert_eq!(c.server.grpc_listen, Some(SocketAddr::from(([0, 0, 0, 0], 8001))));
    let e = with("  grpc_listen: \"port 8001\"").unwrap_err();
    assert!(places(&e)[0].starts_with("server.grpc_listen: invalid address \"port 8001\""), "{e}");
    let e = with("  listen: \"127.0.0.1:8001\"\n  grpc_listen: \"127.0.0.1:8001\"").unwrap_err();
    assert!(places(&e)[0].contains("is also server.listen"), "{e}");
}

#[test]
fn grpc_upstreams_are_model_servers_at_a_host_and_port() {
    let dir = tempfile::tempdir().unwrap();
    let c = parse_in(
        dir.path(),
        "backends:\n  - name: g\n    upstream: {url: \"http://127.0.0.1:8001\", protocol: grpc}\nroutes:\n  - model: m\n    backend: g\n",
    )
    .unwrap();
    let BackendKind::Upstream(u) = &c.backends[0].kind else { panic!() };
    assert_eq!(u.protocol, UpstreamProtocol::Grpc);
    let e = parse_in(
        dir.path(),
        r#"
backends:
  - name: g
    upstream: {url: "http://127.0.0.1:8001/base", protocol: grpc}
  - name: h
    upstream: {url: "http://127.0.0.1:8000", protocol: http2}
  - name: g2
    upstream: {url: "http://127.0.0.1:8002", protocol: grpc}
routes:
  - path_prefix: /x/
    backend: g2
"#,
    )
    .unwrap_err();
    let found = places(&e);
    for want in [
        "backends[0].upstream.urls[0]: a gRPC upstream is a host and port",
        "backends[1].upstream.protocol: unknown protocol \"http2\": use `http` (the default) or `grpc`",
        "routes[0].backend: backend \"g2\" speaks gRPC (protocol: grpc)",
    ] {
        assert!(found.iter().any(|f| f.contains(want)), "{want:?} not in {found:#?}");
    }
}

#[test]
fn prometheus_checks_are_validated_with_their_places() {
    let dir = tempfile::tempdir().unwrap();
    write_model(dir.path(), "a.onnx");
    write_model(dir.path(), "b.onnx");
    let file = |checks: &str| {
        format!(
            "backends:\n  - {{name: a, onnx: {{path: a.onnx}}}}\n  - {{name: b, onnx: {{path: b.onnx}}}}\nroutes:\n  - model: r\n    strategy:\n      canary:\n        stable: a\n        canary: b\n        steps: [{{weight: 10, pause: 1m}}]\n        analysis:\n          checks: {checks}\n"
        )
    };
    let c = parse_in(dir.path(), &file(r#"[{name: p95, prometheus: "http://127.0.0.1:9090", query: "up", max: 0.5}]"#))
        .unwrap();
    let Strategy::Canary { plan: Some(plan), .. } = &c.routes[0].strategy else { panic!() };
    assert_eq!((plan.checks[0].name.as_str(), plan.checks[0].max), ("p95", Some(0.5)));
    let e = parse_in(
        dir.path(),
        &file(r#"[{name: x, prometheus: "ftp://p", query: "", min: 2, max: 1}, {name: x, prometheus: "http://p:9090", query: "up"}]"#),
    )
    .unwrap_err();
    let at = "routes[0].strategy.canary.analysis.checks";
    assert_eq!(
        places(&e),
        [
            format!("{at}[0].prometheus: \"ftp://p\" is not an http:// URL of a Prometheus server"),
            format!("{at}[0].query: write a PromQL query of at most 4096 characters"),
            format!("{at}[0].min: 2 is above max 1"),
            format!("{at}[1].name: another check is named \"x\""),
            format!("{at}[1]: give a bound: min, max or both"),
        ]
    );
}

#[test]
fn quality_settings_are_checked_with_their_places() {
    let dir = tempfile::tempdir().unwrap();
    write_model(dir.path(), "m.onnx");
    let profile = crate::quality::profile::Profile::of("m.onnx".into(), "x".into(), 2, &[1.0, 2.0, 3.0, 4.0], vec![]);
    std::fs::write(dir.path().join("p.json"), serde_json::to_string(&profile).unwrap()).unwrap();
    let e = parse_in(
        dir.path(),
        r#"
backends:
  - name: m
    onnx: {path: m.onnx, profile: p.json}
  - name: up
    upstream: {url: "http://127.0.0.1:9"}
routes:
  - model: a
    backend: m
    validation: {on_invalid: drop, margin: -1}
    drift: {window: 10m, min_samples: 5, psi: 0, p_value: 2, features: [f0, f0]}
    performance: {floor: 1.5, confidence: 0.3}
  - model: b
    backend: up
    drift: {}
"#,
    )
    .unwrap_err();
    let got = places(&e);
    let expect = [
        "routes[0].validation.on_invalid: unknown value \"drop\"",
        "routes[0].validation.margin: must be between 0 and 10",
        "routes[0].drift.min_samples: must be at least 10",
        "routes[0].drift.psi: must be above 0",
        "routes[0].drift.p_value: must be between 0 and 1",
        "routes[0].drift.features[1]: \"f0\" is named twice",
        "routes[0].performance.floor: an accuracy between 0 and 1",
        "routes[0].performance.confidence: must be at least 0.5",
        "routes[1]: drift need a profile on every variant: backend \"up\" has none",
    ];
    for want in expect {
        assert!(got.iter().any(|g| g.starts_with(want)), "missing {want:?} in {got:#?}");
    }
    // The same file with sound values is accepted, the profile read with it.
    let c = parse_in(
        dir.path(),
        "backends:\n  - name: m\n    onnx: {path: m.onnx, profile: p.json}\nroutes:\n  - model: a\n    backend: m\n    \
         validation: {on_invalid: reject}\n    drift: {features: [f1]}\n",
    )
    .unwrap();
    let BackendKind::Onnx(o) = &c.backends[0].kind else { panic!() };
    assert_eq!(o.profile.as_ref().unwrap().profile.features.len(), 2);
    assert_eq!(c.routes[0].validation.as_ref().unwrap().on_invalid, OnInvalid::Reject);
    assert_eq!(c.routes[0].drift.as_ref().unwrap().window, Duration::from_secs(600));
}

#[test]
fn a_registry_backend_serves_the_file_its_pointer_names_once_fetched() {
    let dir = tempfile::tempdir().unwrap();
    let text =
        "backends:\n  - name: m\n    onnx: {registry: {mlflow: \"http://127.0.0.1:5000\", model: bc, alias: champion, \
                cache: cache}}\nroutes:\n  - model: risk\n    backend: m\n";
    // Nothing fetched yet: the file is valid, the backend has no model (loading it says so).
    let c = parse_in(dir.path(), text).unwrap();
    let BackendKind::Onnx(o) = &c.backends[0].kind else { panic!() };
    let reg = o.registry.as_ref().unwrap();
    assert_eq!((reg.spec.poll, reg.spec.max_bytes, reg.fetched.as_ref()), (DEFAULT_POLL, DEFAULT_MAX_BYTES, None));
    assert_eq!(reg.spec.pointer_path(), dir.path().join("cache/bc@champion.json"));
    // Fetched: the pointer's file and digest.
    std::fs::create_dir(dir.path().join("cache")).unwrap();
    write_model(&dir.path().join("cache"), "bc@champion-v3-abc.onnx");
    let digest = backend::file_sha256(&dir.path().join("cache/bc@champion-v3-abc.onnx")).unwrap();
    let pointer = Pointer {
        registry: "http://127.0.0.1:5000/".into(),
        model: "bc".into(),
        alias: "champion".into(),
        version: "3".into(),
        source: "models:/m-1".into(),
        run_id: String::new(),
        artifact: "http://127.0.0.1:5000/api/2.0/mlflow-artifacts/artifacts/0/models/m-1/artifacts/model.onnx".into(),
        file: "bc@champion-v3-abc.onnx".into(),
        sha256: digest.clone(),
        fetched_at_ms: 1,
    };
    std::fs::write(reg.spec.pointer_path(), serde_json::to_vec(&pointer).unwrap()).unwrap();
    let c = parse_in(dir.path(), text).unwrap();
    let BackendKind::Onnx(o) = &c.backends[0].kind else { panic!() };
    assert_eq!((o.path.clone(), o.sha256.clone()), (dir.path().join("cache/bc@champion-v3-abc.onnx"), digest));
    // A cached file changed on disk is refused, naming it.
    write_model(&dir.path().join("cache"), "bc@champion-v3-abc.onnx");
    std::fs::write(dir.path().join("cache/bc@champion-v3-abc.onnx"), b"changed").unwrap();
    let e = places(&parse_in(dir.path(), text).unwrap_err());
    assert!(
        e[0].starts_with("backends[0].onnx.registry: ") && e[0].contains("bc@champion-v3-abc.onnx has SHA-256"),
        "{e:?}"
    );
}

#[test]
fn a_registry_needs_an_http_url_and_excludes_a_path() {
    let dir = tempfile::tempdir().unwrap();
    write_model(dir.path(), "m.onnx");
    let e = parse_in(
        dir.path(),
        "backends:\n  - name: a\n    onnx: {path: m.onnx, registry: {mlflow: \"http://h:1\", model: m, alias: x}}\n  - name: b\n    \
         onnx: {registry: {mlflow: \"ftp://h\", model: \"\", alias: x, max_bytes: 0, poll: soon}}\n",
    )
    .unwrap_err();
    let e = places(&e);
    assert!(e.iter().any(|i| i == "backends[0].onnx: set either `path` or `registry`, not both"), "{e:?}");
    for place in [
        "backends[1].onnx.registry.mlflow",
        "backends[1].onnx.registry.model",
        "backends[1].onnx.registry.max_bytes",
        "backends[1].onnx.registry.poll",
    ] {
        assert!(e.iter().any(|i| i.starts_with(&format!("{place}: "))), "{place} in {e:?}");
    }
}

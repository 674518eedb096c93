//! A route's revision: the identity of what decides its traffic. A new revision starts the
//! rollout over; anything else (limits, shadow share, analysis thresholds, timeouts, step
//! pauses) applies to the running rollout.
//!
//! The revision is a versioned digest (`r1-` + 16 hex digits of SHA-256) of a canonical JSON
//! document (keys sorted, no whitespace) holding the strategy, its variants in bucket order with
//! their roles, the A/B weights and control, where sticky keys come from, and each variant's
//! backend identity: an ONNX model's file digest (not its path), an upstream's URLs and the
//! model name asked of it. Struct layouts and `Debug` output are not part of it, so an upgrade
//! does not silently restart every rollout; a change to this format bumps the version.

use crate::config::{BackendKind, BackendSpec, RouteKind, RouteSpec, Sticky, Strategy};
use serde_json::{json, Value};

/// The revision format; part of every revision string.
pub const FORMAT: &str = "r1";

fn sticky(s: &Sticky) -> Value {
    match s {
        Sticky::Header(h) => json!({ "header": h }),
        Sticky::Cookie(c) => json!({ "cookie": c }),
        Sticky::Query(q) => json!({ "query": q }),
    }
}

fn backend(name: &str, backends: &[BackendSpec], upstream_model: Option<&str>) -> Value {
    match backends.iter().find(|b| b.name == name).map(|b| &b.kind) {
        Some(BackendKind::Onnx(o)) => json!({ "onnx_sha256": o.sha256 }),
        Some(BackendKind::Upstream(u)) => json!({
            "upstream": u.urls.iter().map(ToString::to_string).collect::<Vec<_>>(),
            "upstream_model": upstream_model,
        }),
        None => Value::Null,
    }
}

/// The canonical document a revision digests.
pub fn identity(spec: &RouteSpec, backends: &[BackendSpec]) -> Value {
    let (kind, upstream_model) = match &spec.kind {
        RouteKind::Model { name, upstream_model } => {
            (json!({ "model": name }), Some(upstream_model.as_deref().unwrap_or(name.as_str())))
        }
        RouteKind::Prefix { prefix, .. } => (json!({ "path_prefix": prefix }), None),
    };
    let variant = |name: &str, role: &str| json!({ "name": name, "role": role, "backend": backend(name, backends, upstream_model) });
    let strategy = match &spec.strategy {
        Strategy::Single { backend } => json!({ "single": [variant(backend, "primary")] }),
        Strategy::Recreate { backend } => json!({ "recreate": [variant(backend, "primary")] }),
        Strategy::BlueGreen { active, preview, .. } => {
            json!({ "blue_green": [variant(active, "active"), variant(preview, "preview")] })
        }
        Strategy::Canary { stable, canary, sticky: st, .. } => json!({
            "canary": [variant(stable, "stable"), variant(canary, "canary")],
            "sticky": st.as_ref().map(sticky),
        }),
        Strategy::AbTest { arms, control, sticky: st, .. } => json!({
            "ab_test": arms
                .iter()
                .map(|(a, w)| {
                    let mut v = variant(a, if a == control { "control" } else { "arm" });
                    v["weight"] = json!(w);
                    v
                })
                .collect::<Vec<_>>(),
            "sticky": sticky(st),
        }),
    };
    json!({ "format": FORMAT, "route": kind, "strategy": strategy })
}

/// The revision of `spec` with the backends it names.
pub fn revision(spec: &RouteSpec, backends: &[BackendSpec]) -> String {
    use sha2::Digest;
    // serde_json's maps are sorted by key (no preserve_order feature): the text is canonical.
    let text = identity(spec, backends).to_string();
    let digest = sha2::Sha256::digest(text.as_bytes());
    format!("{FORMAT}-{}", crate::protocol::secret::hex(&digest[..8]))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    fn config(text: &str) -> Config {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a.onnx"), b"model a").unwrap();
        std::fs::write(dir.path().join("b.onnx"), b"model b").unwrap();
        std::fs::write(dir.path().join("c.onnx"), b"model c").unwrap();
        Config::parse(text, &dir.path().join("routes.yaml")).unwrap()
    }

    const BASE: &str = "
backends:
  - {name: a, onnx: {path: a.onnx}}
  - {name: b, onnx: {path: b.onnx, sessions: 1}}
  - {name: up, upstream: {url: 'http://127.0.0.1:9', request_timeout: 5s}}
routes:
  - model: risk
    max_concurrency: 10
    strategy:
      canary:
        stable: a
        canary: b
        sticky: {header: x-user}
        steps: [{weight: 10, pause: 1m}, {weight: 50, pause: 1m}]
        analysis: {min_samples: 100, max_error_rate: 0.01}
  - model: remote
    backend: up
    upstream_model: risk
";

    fn revisions(text: &str) -> Vec<String> {
        let c = config(text);
        c.routes.iter().map(|r| revision(r, &c.backends)).collect()
    }

    #[test]
    fn a_fixed_spec_has_a_pinned_revision() {
        // Changing this value restarts every rollout on upgrade: bump FORMAT instead, on purpose.
        assert_eq!(revisions(BASE), ["r1-781a6cd3dca6238e", "r1-569a307f601d68c3"]);
    }

    #[test]
    fn operational_fields_keep_the_revision_and_identity_changes_it() {
        let base = revisions(BASE);
        for same in [
            BASE.replace("max_concurrency: 10", "max_concurrency: 99"),
            BASE.replace("min_samples: 100", "min_samples: 500"),
            BASE.replace("pause: 1m}]", "pause: 5m}]"),
            BASE.replace("sessions: 1", "sessions: 4"),
            BASE.replace("request_timeout: 5s", "request_timeout: 9s"),
        ] {
            assert_eq!(revisions(&same), base, "{same}");
        }
        let changed = revisions(&BASE.replace("b.onnx, sessions", "c.onnx, sessions"));
        assert_ne!(changed[0], base[0], "another model file is another rollout");
        assert_eq!(changed[1], base[1]);
        let sticky = revisions(&BASE.replace("x-user", "x-other"));
        assert_ne!(sticky[0], base[0]);
        let upstream = revisions(&BASE.replace("upstream_model: risk", "upstream_model: risk2"));
        assert_ne!(upstream[1], base[1]);
        let url = revisions(&BASE.replace("127.0.0.1:9", "127.0.0.1:10"));
        assert_ne!(url[1], base[1]);
    }
}

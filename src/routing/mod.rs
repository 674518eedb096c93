//! The routing table: an immutable snapshot of routes and their variants, published atomically.
//!
//! Readers call [`SharedTable::load`] once per request and never lock; every change builds a
//! whole new [`RouteTable`] and swaps it in.

use crate::backend::{Backend, BackendSet};
use crate::config::{Config, RouteKind};
use crate::protocol::ApiError;
use arc_swap::ArcSwap;
use std::collections::HashMap;
use std::sync::Arc;

/// A backend in a route's rollout. With one backend per route, the variant is named after it.
#[derive(Debug)]
pub struct Variant {
    /// Name clients can pin with `/versions/{name}`.
    pub name: String,
    /// What answers.
    pub backend: Arc<Backend>,
}

/// A route: what clients address, and the variants that can answer.
#[derive(Debug)]
pub struct Route {
    /// Model name or path prefix.
    pub name: String,
    /// How the route is addressed.
    pub kind: RouteKind,
    /// At least one.
    pub variants: Vec<Variant>,
}

impl Route {
    /// The variant that answers: the one named by `version`, else the first.
    pub fn variant(&self, version: Option<&str>) -> Result<&Variant, ApiError> {
        match version {
            None => self
                .variants
                .first()
                .ok_or_else(|| ApiError::internal(format!("route {:?} has no variant", self.name))),
            Some(v) => self.variants.iter().find(|x| x.name == v).ok_or_else(|| {
                let known: Vec<&str> = self.variants.iter().map(|x| x.name.as_str()).collect();
                ApiError::not_found(format!(
                    "model {:?} has no version {v:?}; versions: {}",
                    self.name,
                    known.join(", ")
                ))
            }),
        }
    }
}

/// One immutable snapshot of every route.
#[derive(Debug, Default)]
pub struct RouteTable {
    generation: u64,
    routes: Vec<Arc<Route>>,
    models: HashMap<String, Arc<Route>>,
    /// Longest prefix first.
    prefixes: Vec<Arc<Route>>,
}

impl RouteTable {
    /// Builds the table for a validated config whose backends are loaded.
    pub fn build(config: &Config, backends: &BackendSet, generation: u64) -> RouteTable {
        let mut table = RouteTable {
            generation,
            ..RouteTable::default()
        };
        for spec in &config.routes {
            let Some(backend) = backends.get(&spec.backend) else {
                continue;
            };
            let route = Arc::new(Route {
                name: spec.name().to_string(),
                kind: spec.kind.clone(),
                variants: vec![Variant {
                    name: spec.backend.clone(),
                    backend: backend.clone(),
                }],
            });
            match &spec.kind {
                RouteKind::Model { name, .. } => {
                    table.models.insert(name.clone(), route.clone());
                }
                RouteKind::Prefix { .. } => table.prefixes.push(route.clone()),
            }
            table.routes.push(route);
        }
        table
            .prefixes
            .sort_by_key(|r| std::cmp::Reverse(r.name.len()));
        table
    }

    /// Increases with every published change.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// Every route in file order.
    pub fn routes(&self) -> &[Arc<Route>] {
        &self.routes
    }

    /// The route for an Open Inference Protocol model name.
    pub fn model(&self, name: &str) -> Option<&Arc<Route>> {
        self.models.get(name)
    }

    /// The proxy route whose prefix is the longest match for `path`, and the rest of the path
    /// after the prefix. `/echo` matches the prefix `/echo/` too.
    pub fn prefix<'a>(&'a self, path: &'a str) -> Option<(&'a Arc<Route>, &'a str)> {
        self.prefixes.iter().find_map(|r| {
            let prefix = r.name.as_str();
            if let Some(rest) = path.strip_prefix(prefix) {
                Some((r, rest))
            } else if path == &prefix[..prefix.len() - 1] {
                Some((r, ""))
            } else {
                None
            }
        })
    }
}

/// Removes `.` and `..` segments (RFC 3986 §5.2.4) so that a path cannot climb out of the prefix
/// it was routed by, and refuses percent-encoded dots, slashes and backslashes, which upstreams
/// may decode into the same climb. `..` at the root stays at the root.
pub fn normalize_path(path: &str) -> Result<std::borrow::Cow<'_, str>, ApiError> {
    let lower = path.to_ascii_lowercase();
    if ["%2e", "%2f", "%5c"].iter().any(|enc| lower.contains(enc)) {
        return Err(ApiError::bad_request(format!(
            "path {path:?} holds a percent-encoded '.', '/' or '\\'; send them unencoded"
        )));
    }
    if !path.split('/').any(|s| s == "." || s == "..") {
        return Ok(std::borrow::Cow::Borrowed(path));
    }
    let mut out: Vec<&str> = Vec::new();
    let segments: Vec<&str> = path.split('/').skip(1).collect();
    for (i, seg) in segments.iter().enumerate() {
        let last = i + 1 == segments.len();
        match *seg {
            "." | ".." => {
                if *seg == ".." {
                    out.pop();
                }
                if last {
                    out.push("");
                }
            }
            s => out.push(s),
        }
    }
    Ok(std::borrow::Cow::Owned(format!("/{}", out.join("/"))))
}

/// The published table, shared by every request and every writer.
#[derive(Debug, Clone)]
pub struct SharedTable(Arc<ArcSwap<RouteTable>>);

impl SharedTable {
    /// Publishes `table` as the first snapshot.
    pub fn new(table: RouteTable) -> SharedTable {
        SharedTable(Arc::new(ArcSwap::from_pointee(table)))
    }

    /// The current snapshot; take it once per request.
    pub fn load(&self) -> Arc<RouteTable> {
        self.0.load_full()
    }

    /// Publishes a new snapshot atomically.
    pub fn store(&self, table: RouteTable) {
        self.0.store(Arc::new(table));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::UpstreamBackend;
    use std::path::Path;

    #[test]
    fn dot_segments_are_removed_and_encoded_ones_refused() {
        let n = |p: &str| normalize_path(p).map(|c| c.into_owned());
        assert_eq!(n("/a/b").unwrap(), "/a/b");
        assert_eq!(n("/keep/../status/418").unwrap(), "/status/418");
        assert_eq!(n("/a/./b/../c").unwrap(), "/a/c");
        assert_eq!(n("/../../etc/passwd").unwrap(), "/etc/passwd");
        assert_eq!(n("/a/b/..").unwrap(), "/a/");
        assert_eq!(n("/a/.").unwrap(), "/a/");
        assert!(n("/keep/%2E%2E/x").is_err());
        assert!(n("/keep/a%2fb").is_err());
    }

    #[test]
    fn longest_prefix_wins_and_bare_prefix_matches() {
        let config = Config::parse(
            "backends:\n  - name: up\n    upstream: {url: \"http://127.0.0.1:1\"}\nroutes:\n  - path_prefix: /a/\n    backend: up\n  - path_prefix: /a/b\n    backend: up\n",
            Path::new("routes.yaml"),
        )
        .unwrap();
        let crate::config::BackendKind::Upstream(spec) = &config.backends[0].kind else {
            panic!()
        };
        let set: BackendSet = [(
            "up".to_string(),
            Arc::new(Backend::Upstream(UpstreamBackend::new("up", spec))),
        )]
        .into();
        let table = RouteTable::build(&config, &set, 7);
        assert_eq!(table.generation(), 7);
        let (r, rest) = table.prefix("/a/b/c?x=1").unwrap();
        assert_eq!((r.name.as_str(), rest), ("/a/b/", "c?x=1"));
        let (r, rest) = table.prefix("/a/z").unwrap();
        assert_eq!((r.name.as_str(), rest), ("/a/", "z"));
        assert_eq!(table.prefix("/a").unwrap().1, "");
        assert!(table.prefix("/ab").is_none());
        assert_eq!(r.variant(None).unwrap().name, "up");
        assert_eq!(
            r.variant(Some("nope")).unwrap_err().status,
            http::StatusCode::NOT_FOUND
        );
    }
}

//! The routing table: an immutable snapshot of routes and their variants, published atomically.
//!
//! Readers call [`SharedTable::load`] once per request and never lock; every change builds a
//! whole new [`RouteTable`] and swaps it in.

pub mod assign;
pub mod build;
mod path;

pub use path::normalize_path;

use crate::backend::Backend;
use crate::config::{FaultSpec, OverridePolicy, RouteKind, Sticky};
use crate::telemetry::shadow::ShadowStats;
use crate::telemetry::VariantStats;
use arc_swap::ArcSwap;
use std::collections::HashMap;
use std::sync::Arc;

/// What a variant is in its route's rollout.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// The only backend of a single or recreate route.
    Primary,
    /// Canary: the current version.
    Stable,
    /// Canary: the candidate.
    Canary,
    /// Blue-green: serving.
    Active,
    /// Blue-green: warm, reachable only when pinned.
    Preview,
    /// A/B: one arm.
    Arm,
}

/// A backend in a route's rollout, named after its backend.
#[derive(Debug)]
pub struct Variant {
    /// Name clients can pin with `/versions/{name}` or `x-modelgate-variant`.
    pub name: String,
    /// Its part in the rollout.
    pub role: Role,
    /// What answers.
    pub backend: Arc<Backend>,
    /// Share of unpinned traffic, in percent.
    pub weight: f64,
    /// Buckets it owns (of [`assign::BUCKETS`]), in one range or several.
    pub buckets: u32,
    /// Its numbers, kept across table swaps.
    pub stats: Arc<VariantStats>,
    /// Injected faults of its backend.
    pub fault: Option<FaultSpec>,
    /// Input validation and drift against its backend's profile, when the route asks for them.
    pub quality: Option<crate::quality::VariantQuality>,
}

/// Where a copy of a share of a route's requests goes.
#[derive(Debug)]
pub struct ShadowTarget {
    /// The shadow backend's name.
    pub name: String,
    /// The shadow backend.
    pub backend: Arc<Backend>,
    /// Percent of requests copied.
    pub percent: f64,
    /// Copies in flight at most.
    pub max_in_flight: usize,
    /// Agreement with the primary, kept across table swaps.
    pub stats: Arc<ShadowStats>,
}

/// A route: what clients address, and the variants that can answer.
#[derive(Debug)]
pub struct Route {
    /// Model name or path prefix.
    pub name: String,
    /// How the route is addressed.
    pub kind: RouteKind,
    /// The strategy's name.
    pub strategy: &'static str,
    /// Salt of the sticky bucket hash: the route's name, the same on every replica.
    pub salt: String,
    /// In bucket order; at least one unless the route is unavailable.
    pub variants: Vec<Variant>,
    /// Bucket ranges in order: (exclusive upper end, index into `variants`). Ranges start where
    /// the previous one ends; together they cover every bucket.
    pub segments: Vec<(u32, usize)>,
    /// The table generation at which this route's spec or status last changed: its ETag.
    pub version: u64,
    /// Where sticky keys come from, if anywhere.
    pub sticky: Option<Sticky>,
    /// Shadow traffic, if any.
    pub shadow: Option<ShadowTarget>,
    /// Set while the route cannot answer (a recreate in progress): requests get 503.
    pub unavailable: Option<String>,
    /// The route's concurrency limit and its permits, kept across table swaps.
    pub limit: Option<(usize, Arc<tokio::sync::Semaphore>)>,
    /// Counts the requests shed at the limit (`modelgate_shed_requests_total{route}`): a handle
    /// made with the table, so a shed request costs no metric lookup.
    pub shed: metrics::Counter,
    /// Who may pin a variant (version path, override header).
    pub overrides: OverridePolicy,
}

impl Route {
    /// A permit to answer one request, or a 503 with `Retry-After` when the route is at its
    /// concurrency limit: shed at once, before anything queues, and counted. Holding the permit
    /// counts the request in flight.
    pub fn admit(&self) -> Result<Option<tokio::sync::OwnedSemaphorePermit>, crate::protocol::ApiError> {
        let Some((max, permits)) = &self.limit else { return Ok(None) };
        permits.clone().try_acquire_owned().map(Some).map_err(|_| {
            self.shed.increment(1);
            crate::protocol::ApiError::unavailable(
                format!("route {:?} is at its limit of {max} concurrent requests; retry shortly", self.name),
                std::time::Duration::from_secs(1),
            )
        })
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
    /// A table of `routes` (in file order) at `generation`.
    pub fn new(generation: u64, routes: Vec<Route>) -> RouteTable {
        let mut table = RouteTable { generation, ..RouteTable::default() };
        for route in routes {
            let route = Arc::new(route);
            match &route.kind {
                RouteKind::Model { name, .. } => {
                    table.models.insert(name.clone(), route.clone());
                }
                RouteKind::Prefix { .. } => table.prefixes.push(route.clone()),
            }
            table.routes.push(route);
        }
        table.prefixes.sort_by_key(|r| std::cmp::Reverse(r.name.len()));
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

    /// Names of the model routes, in file order.
    pub fn model_names(&self) -> Vec<&str> {
        self.routes.iter().filter(|r| matches!(r.kind, RouteKind::Model { .. })).map(|r| r.name.as_str()).collect()
    }

    /// The route with this name (model name or prefix).
    pub fn route(&self, name: &str) -> Option<&Arc<Route>> {
        self.routes.iter().find(|r| r.name == name)
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

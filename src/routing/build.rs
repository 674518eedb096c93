//! Table building: the spec, each route's layout (from its rollout status) and the loaded
//! backends, made into one immutable [`RouteTable`] — or every reason it cannot be.

use super::assign::Layout;
use super::{Route, RouteTable, ShadowTarget, Variant};
use crate::backend::Backend;
use crate::config::{BackendKind, Config, ConfigErrors, ConfigIssue, OnnxSpec, RouteSpec, Strategy};
use crate::quality::capture::Capture;
use crate::quality::VariantQuality;
use crate::telemetry::shadow::ShadowStats;
use crate::telemetry::Telemetry;
use std::collections::HashMap;
use std::sync::Arc;

/// A concurrency limit and its permits, kept across tables while the limit is unchanged.
pub type Limit = (usize, Arc<tokio::sync::Semaphore>);

/// What a table is built from.
#[derive(Debug)]
pub struct Parts<'a> {
    /// The validated spec.
    pub config: &'a Config,
    /// Each route's layout, by route name.
    pub layouts: &'a HashMap<String, Layout>,
    /// Each route's version (its ETag), by route name.
    pub versions: &'a HashMap<String, u64>,
    /// Loaded backends by name.
    pub backends: &'a HashMap<String, Arc<Backend>>,
    /// Where each variant's numbers live.
    pub telemetry: &'a Telemetry,
    /// Concurrency limits by route name.
    pub limits: &'a HashMap<String, Limit>,
    /// Shadow agreement by route name.
    pub shadow_stats: &'a HashMap<String, Arc<ShadowStats>>,
    /// Routes that answer 503 for now (a recreate replacing its backend).
    pub unavailable: &'a [&'a str],
}

/// Builds the table at `generation`; every problem is reported with its place.
pub fn build(parts: &Parts<'_>, generation: u64) -> Result<RouteTable, ConfigErrors> {
    let config = parts.config;
    let mut routes = Vec::with_capacity(config.routes.len());
    let mut issues = Vec::new();
    for (i, spec) in config.routes.iter().enumerate() {
        let name = spec.name();
        let gap = parts.unavailable.contains(&name);
        let mut variants = Vec::new();
        let mut segments = Vec::new();
        if let (false, Some(layout)) = (gap, parts.layouts.get(name)) {
            // Shares whose backend is missing are reported; indices follow the loaded ones.
            let mut index = Vec::with_capacity(layout.shares.len());
            for share in &layout.shares {
                let Some(backend) = parts.backends.get(&share.name) else {
                    issues.push(ConfigIssue {
                        place: format!("routes[{i}]"),
                        message: format!("backend {:?} is not loaded", share.name),
                    });
                    index.push(None);
                    continue;
                };
                index.push(Some(variants.len()));
                variants.push(Variant {
                    name: share.name.clone(),
                    role: share.role,
                    backend: backend.clone(),
                    weight: share.weight,
                    buckets: share.buckets,
                    stats: parts.telemetry.variant(name, &share.name),
                    fault: config.backends.iter().find(|b| b.name == share.name).and_then(|b| b.fault.clone()),
                    quality: quality(parts, spec, &share.name, backend, i, &mut issues),
                });
            }
            segments =
                layout.segments.iter().filter_map(|(upper, s)| Some((*upper, index.get(*s).copied()??))).collect();
        }
        let shadow = spec.shadow.as_ref().filter(|_| !gap).and_then(|sh| {
            Some(ShadowTarget {
                name: sh.backend.clone(),
                backend: parts.backends.get(&sh.backend)?.clone(),
                percent: sh.percent,
                max_in_flight: sh.max_in_flight,
                stats: parts.shadow_stats.get(name).cloned().unwrap_or_default(),
            })
        });
        check_inputs(i, &variants, shadow.as_ref(), &mut issues);
        parts.telemetry.quality.schedule(name, spec.schedule.as_ref());
        let sticky = match &spec.strategy {
            Strategy::Canary { sticky, .. } => sticky.clone(),
            Strategy::AbTest { sticky, .. } => Some(sticky.clone()),
            _ => None,
        };
        routes.push(Route {
            name: name.to_string(),
            kind: spec.kind.clone(),
            strategy: spec.strategy.name(),
            salt: name.to_string(),
            variants,
            segments,
            version: parts.versions.get(name).copied().unwrap_or(generation),
            sticky,
            shadow,
            unavailable: gap.then(|| "its backend is being replaced (recreate); retry shortly".to_string()),
            limit: parts.limits.get(name).cloned(),
            shed: parts
                .telemetry
                .counter(crate::telemetry::names::SHED_TOTAL, vec![metrics::Label::new("route", name.to_string())]),
            overrides: spec.overrides.unwrap_or(config.server.overrides),
        });
    }
    if issues.is_empty() {
        Ok(RouteTable::new(generation, routes))
    } else {
        Err(ConfigErrors { file: config.source.clone(), issues })
    }
}

/// The input checks (against its backend's profile) and label window of a variant, when its
/// route asks for them.
fn quality(
    parts: &Parts<'_>,
    route: &RouteSpec,
    variant: &str,
    backend: &Backend,
    i: usize,
    issues: &mut Vec<ConfigIssue>,
) -> Option<VariantQuality> {
    let spec = parts.config.backends.iter().find(|b| b.name == variant)?;
    let profile = match &spec.kind {
        BackendKind::Onnx(OnnxSpec { profile, .. }) => profile.as_ref(),
        BackendKind::Upstream(_) => None,
    };
    let inputs: Vec<&str> = match backend {
        Backend::Onnx(model) => model.signature().inputs.iter().map(|i| i.name.as_str()).collect(),
        Backend::Upstream(_) => Vec::new(),
    };
    let counter = |feature: &str| {
        let labels = vec![
            metrics::Label::new("route", route.name().to_string()),
            metrics::Label::new("feature", feature.to_string()),
        ];
        parts.telemetry.counter(crate::telemetry::names::INVALID_INPUTS, labels)
    };
    let capture = route.capture.as_ref().and_then(|c| {
        let mut spec = c.clone();
        spec.dir = parts.config.source.parent().map_or_else(|| c.dir.clone(), |base| base.join(&c.dir));
        let outcome = |o: &'static str| {
            let labels =
                vec![metrics::Label::new("route", route.name().to_string()), metrics::Label::new("outcome", o)];
            parts.telemetry.counter(crate::telemetry::names::CAPTURE_TOTAL, labels)
        };
        let start = || Capture::start(route.name(), spec.clone(), outcome);
        match parts.telemetry.quality.capture(route.name(), &spec, start) {
            Ok(c) => Some(c),
            Err(message) => {
                issues.push(ConfigIssue { place: format!("routes[{i}].capture.dir"), message });
                None
            }
        }
    });
    VariantQuality::new(route, variant, profile, &inputs, &parts.telemetry.quality, capture, counter)
}

/// Every in-process model a route may send a request to must take the same inputs.
fn check_inputs(i: usize, variants: &[Variant], shadow: Option<&ShadowTarget>, issues: &mut Vec<ConfigIssue>) {
    let mut sigs =
        variants.iter().map(|v| (&v.name, &v.backend)).chain(shadow.iter().map(|s| (&s.name, &s.backend))).filter_map(
            |(n, b)| match b.as_ref() {
                Backend::Onnx(m) => Some((n, m.signature())),
                Backend::Upstream(_) => None,
            },
        );
    if let Some((first, sig)) = sigs.next() {
        for (other, s) in sigs {
            if s.inputs != sig.inputs {
                issues.push(ConfigIssue {
                    place: format!("routes[{i}]"),
                    message: format!(
                        "backends {first:?} and {other:?} take different inputs, so they cannot serve one route"
                    ),
                });
            }
        }
    }
}

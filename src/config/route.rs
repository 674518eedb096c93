//! `routes:` of routes.yaml: how each route is addressed and which strategy shares its traffic.

use super::*;

/// A route: what clients address, and how its variants share the traffic.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct RouteSpec {
    /// How requests are matched.
    pub kind: RouteKind,
    /// Which backends answer, and in what shares. Every backend named exists.
    pub strategy: Strategy,
    /// A copy of a share of requests for another backend (model routes only).
    pub shadow: Option<ShadowSpec>,
    /// Requests answered at once; more are shed with 503 + `Retry-After` before they queue.
    pub max_concurrency: Option<usize>,
    /// Who may pin a variant on this route; the server's policy when `None`.
    pub overrides: Option<OverridePolicy>,
    /// Rows checked against the answering variant's profile.
    pub validation: Option<ValidationSpec>,
    /// Live inputs per variant compared with its profile.
    pub drift: Option<DriftSpec>,
    /// Accuracy from label feedback per variant against a floor.
    pub performance: Option<PerformanceSpec>,
    /// Answers and their feedback logged as JSON Lines.
    pub capture: Option<CaptureSpec>,
    /// `schedule: {every: 24h}` or `{cron: "0 3 * * *"}`: when a `retrain_due` event goes out.
    pub schedule: Option<crate::quality::Schedule>,
}

/// A deployment strategy. Variants are named after their backends.
#[derive(Debug, Clone, PartialEq)]
pub enum Strategy {
    /// `backend: x` — one backend, nothing to roll out.
    Single {
        /// The backend.
        backend: String,
    },
    /// One copy in memory: a new backend replaces the old after it is unloaded; requests in the
    /// gap get 503 with `Retry-After`.
    Recreate {
        /// The backend.
        backend: String,
    },
    /// Both colours warm; all traffic on `active`, `preview` reachable only when pinned.
    BlueGreen {
        /// Serves the traffic.
        active: String,
        /// Warm, reachable through the override header or the version path.
        preview: String,
        /// How long the old colour stays warm after a switch.
        scale_down_delay: Duration,
        /// Analysis of the preview before a switch and of the new colour after it.
        plan: Option<BlueGreenPlan>,
    },
    /// A weighted split between `stable` and `canary`.
    Canary {
        /// The current version.
        stable: String,
        /// The candidate.
        canary: String,
        /// Percent of traffic for the canary, 0..=100.
        weight: f64,
        /// Keeps a user on one side when a key is present.
        sticky: Option<Sticky>,
        /// Steps with automatic analysis; without them the weight only changes by hand.
        plan: Option<CanaryPlan>,
    },
    /// Two or more arms, sticky per user.
    AbTest {
        /// Arms with relative weights, in file order (the order of their bucket ranges).
        arms: Vec<(String, f64)>,
        /// The arm the others are compared with (`control:`, default the first arm written).
        control: String,
        /// Where the user key comes from.
        sticky: Sticky,
        /// How a winner is found, if automatically.
        plan: Option<AbPlan>,
    },
}

/// Where a sticky user key comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Sticky {
    /// A request header (name lower-cased).
    Header(String),
    /// A cookie; with none, the gateway draws a key and sets the cookie.
    Cookie(String),
    /// A query parameter.
    Query(String),
}

/// A share of requests copied to another backend, off the client's path.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct ShadowSpec {
    /// The backend that gets the copies.
    pub backend: String,
    /// Percent of requests copied, 0..=100.
    pub percent: f64,
    /// Copies in flight at most; more are skipped (counted), never queued.
    pub max_in_flight: usize,
}

impl Strategy {
    /// The strategy's name as written in routes.yaml.
    pub fn name(&self) -> &'static str {
        match self {
            Strategy::Single { .. } => "single",
            Strategy::Recreate { .. } => "recreate",
            Strategy::BlueGreen { .. } => "blue_green",
            Strategy::Canary { .. } => "canary",
            Strategy::AbTest { .. } => "ab_test",
        }
    }

    /// Every backend that answers, in bucket order (stable / active first).
    pub fn backends(&self) -> Vec<&str> {
        match self {
            Strategy::Single { backend } | Strategy::Recreate { backend } => vec![backend],
            Strategy::BlueGreen { active, preview, .. } => vec![active, preview],
            Strategy::Canary { stable, canary, .. } => vec![stable, canary],
            Strategy::AbTest { arms, .. } => arms.iter().map(|(a, _)| a.as_str()).collect(),
        }
    }
}

/// How a route is addressed.
#[derive(Debug, Clone, PartialEq)]
pub enum RouteKind {
    /// An Open Inference Protocol model name: `/v2/models/{name}/...`.
    Model {
        /// The name clients use.
        name: String,
        /// For upstream backends: the model name the upstream knows (default: `name`).
        upstream_model: Option<String>,
    },
    /// Plain HTTP proxying of every path under `prefix`.
    Prefix {
        /// Starts and ends with `/`.
        prefix: String,
        /// Replaces `prefix` in the forwarded path (default: keep it). Starts and ends with `/`.
        rewrite: Option<String>,
    },
}

impl RouteSpec {
    /// The route's name as shown in logs and admin output: the model name or the prefix.
    pub fn name(&self) -> &str {
        match &self.kind {
            RouteKind::Model { name, .. } => name,
            RouteKind::Prefix { prefix, .. } => prefix,
        }
    }

    /// Every backend the route needs loaded: its variants, then its shadow.
    pub fn backends(&self) -> Vec<&str> {
        let mut all = self.strategy.backends();
        if let Some(shadow) = &self.shadow {
            all.push(&shadow.backend);
        }
        all
    }
}

/// A path prefix for proxying: starts and ends with `/`, and stays clear of the OIP paths.
pub(super) fn check_prefix(text: &str, place: &str, issues: &mut Issues) -> Option<String> {
    if !text.starts_with('/') || text.contains(['?', '#', ' ', '~', '%']) {
        issues.push(
            place,
            format!("invalid path {text:?}: must start with '/' and hold no '?', '#', '~', '%' or spaces"),
        );
        return None;
    }
    let normal = if text.ends_with('/') { text.to_string() } else { format!("{text}/") };
    Some(normal)
}

pub(super) fn sticky(raw: &RawSticky, place: &str, issues: &mut Issues) -> Option<Sticky> {
    let valid = |name: &str| !name.is_empty() && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
    let sticky = match (&raw.header, &raw.cookie, &raw.query) {
        (Some(h), None, None) => Sticky::Header(h.to_ascii_lowercase()),
        (None, Some(c), None) => Sticky::Cookie(c.clone()),
        (None, None, Some(q)) => Sticky::Query(q.clone()),
        _ => {
            issues.push(place, "set exactly one of `header`, `cookie` or `query`");
            return None;
        }
    };
    let (Sticky::Header(name) | Sticky::Cookie(name) | Sticky::Query(name)) = &sticky;
    if !valid(name) {
        issues.push(place, format!("invalid key name {name:?}: use letters, digits, '-', '_' or '.'"));
        return None;
    }
    Some(sticky)
}

pub(super) fn strategy(r: &RawRoute, place: &str, issues: &mut Issues) -> Option<Strategy> {
    let s = match (&r.backend, &r.strategy) {
        (Some(b), None) => return Some(Strategy::Single { backend: b.clone() }),
        (Some(_), Some(_)) => {
            issues.push(place, "set either `backend` or `strategy`, not both");
            return None;
        }
        (None, None) => {
            issues.push(
                place,
                "missing `backend: <name>` or `strategy: {recreate | blue_green | canary | ab_test: ...}`",
            );
            return None;
        }
        (None, Some(s)) => s,
    };
    let place = format!("{place}.strategy");
    let set = [s.recreate.is_some(), s.blue_green.is_some(), s.canary.is_some(), s.ab_test.is_some()];
    if set.iter().filter(|x| **x).count() != 1 {
        issues.push(&place, "set exactly one of `recreate`, `blue_green`, `canary` or `ab_test`");
        return None;
    }
    if let Some(r) = &s.recreate {
        return Some(Strategy::Recreate { backend: r.backend.clone() });
    }
    if let Some(bg) = &s.blue_green {
        let place = format!("{place}.blue_green");
        if bg.active == bg.preview {
            issues.push(format!("{place}.preview"), format!("preview must differ from active ({:?})", bg.active));
        }
        let delay =
            duration(&bg.scale_down_delay, Duration::from_secs(30), &format!("{place}.scale_down_delay"), issues);
        let plan = bg.analysis.as_ref().map(|a| {
            let ap = format!("{place}.analysis");
            super::analysis::no_checks(a, &ap, issues);
            BlueGreenPlan {
                criteria: criteria(a, &ap, issues),
                interval: duration(&a.interval, Duration::from_secs(10), &format!("{ap}.interval"), issues),
                auto_promote_after: bg.auto_promote_after.as_ref().map(|_| {
                    duration(
                        &bg.auto_promote_after,
                        Duration::from_secs(300),
                        &format!("{place}.auto_promote_after"),
                        issues,
                    )
                }),
                post_switch_window: duration(
                    &bg.post_switch_window,
                    Duration::from_secs(120),
                    &format!("{place}.post_switch_window"),
                    issues,
                ),
            }
        });
        if plan.is_none() && (bg.auto_promote_after.is_some() || bg.post_switch_window.is_some()) {
            issues.push(format!("{place}.analysis"), "auto_promote_after and post_switch_window need an `analysis`");
        }
        return Some(Strategy::BlueGreen {
            active: bg.active.clone(),
            preview: bg.preview.clone(),
            scale_down_delay: delay,
            plan,
        });
    }
    if let Some(c) = &s.canary {
        let place = format!("{place}.canary");
        if c.stable == c.canary {
            issues.push(format!("{place}.canary"), format!("canary must differ from stable ({:?})", c.stable));
        }
        percent(c.weight, &format!("{place}.weight"), issues);
        let st = c.sticky.as_ref().and_then(|st| sticky(st, &format!("{place}.sticky"), issues));
        let plan = c.steps.as_ref().map(|steps| canary_plan(steps, c.analysis.as_ref(), &place, issues));
        if c.analysis.is_some() && c.steps.is_none() {
            issues.push(format!("{place}.analysis"), "analysis runs between steps: add `steps`");
        }
        return Some(Strategy::Canary {
            stable: c.stable.clone(),
            canary: c.canary.clone(),
            weight: c.weight,
            sticky: st,
            plan,
        });
    }
    let ab = s.ab_test.as_ref()?;
    let place = format!("{place}.ab_test");
    if ab.variants.len() < 2 {
        issues.push(
            format!("{place}.variants"),
            format!("an A/B test needs at least two variants, got {}", ab.variants.len()),
        );
    }
    for (i, (name, w)) in ab.variants.iter().enumerate() {
        if !(w.is_finite() && *w >= 0.0) {
            issues.push(format!("{place}.variants.{name}"), format!("weight must be zero or more, got {w}"));
        }
        if ab.variants[..i].iter().any(|(n, _)| n == name) {
            issues.push(format!("{place}.variants.{name}"), "named twice");
        }
    }
    if ab.variants.iter().all(|(_, w)| *w <= 0.0) {
        issues.push(format!("{place}.variants"), "at least one weight must be above zero");
    }
    let control = match &ab.control {
        Some(c) if !ab.variants.iter().any(|(n, _)| n == c) => {
            let names: Vec<&str> = ab.variants.iter().map(|(n, _)| n.as_str()).collect();
            issues.push(format!("{place}.control"), format!("{c:?} is not one of the arms ({})", names.join(", ")));
            return None;
        }
        Some(c) => c.clone(),
        None => ab.variants.first()?.0.clone(),
    };
    let st = sticky(&ab.sticky, &format!("{place}.sticky"), issues)?;
    let plan = ab.analysis.as_ref().and_then(|a| ab_plan(a, &format!("{place}.analysis"), issues));
    Some(Strategy::AbTest { arms: ab.variants.clone(), control, sticky: st, plan })
}

pub(super) fn routes(raw: &[RawRoute], raw_backends: &[RawBackend], issues: &mut Issues) -> Vec<RouteSpec> {
    let is_upstream: HashMap<&str, bool> =
        raw_backends.iter().map(|b| (b.name.as_str(), b.upstream.is_some() && b.onnx.is_none())).collect();
    let speaks_grpc: Vec<&str> = raw_backends
        .iter()
        .filter(|b| b.upstream.as_ref().and_then(|u| u.protocol.as_deref()) == Some("grpc"))
        .map(|b| b.name.as_str())
        .collect();
    let known: Vec<&str> = raw_backends.iter().map(|b| b.name.as_str()).collect();
    let mut models: HashMap<String, usize> = HashMap::new();
    let mut prefixes: HashMap<String, usize> = HashMap::new();
    let mut out = Vec::with_capacity(raw.len());
    for (i, r) in raw.iter().enumerate() {
        let place = format!("routes[{i}]");
        let strategy = strategy(r, &place, issues);
        let backend_place = if r.strategy.is_some() { format!("{place}.strategy") } else { format!("{place}.backend") };
        let mut all_known = true;
        let named: Vec<&str> = strategy.as_ref().map(Strategy::backends).unwrap_or_default();
        for b in &named {
            if !is_upstream.contains_key(b) {
                all_known = false;
                issues.push(&backend_place, format!("unknown backend {b:?} (backends: {})", known.join(", ")));
            }
        }
        let shadow = r.shadow.as_ref().and_then(|sh| {
            let ok_backend = is_upstream.contains_key(sh.backend.as_str());
            if !ok_backend {
                issues.push(
                    format!("{place}.shadow.backend"),
                    format!("unknown backend {:?} (backends: {})", sh.backend, known.join(", ")),
                );
            }
            if named.contains(&sh.backend.as_str()) {
                issues.push(
                    format!("{place}.shadow.backend"),
                    format!("{:?} already answers this route; shadow another backend", sh.backend),
                );
            }
            let ok_percent = percent(sh.percent, &format!("{place}.shadow.percent"), issues);
            let max_in_flight = count(sh.max_in_flight, 64, 100_000, &format!("{place}.shadow.max_in_flight"), issues);
            (ok_backend && ok_percent).then(|| ShadowSpec {
                backend: sh.backend.clone(),
                percent: sh.percent,
                max_in_flight,
            })
        });
        let kind = match (&r.model, &r.path_prefix) {
            (Some(name), None) => {
                let mut ok = check_name(name, &format!("{place}.model"), issues);
                if ok {
                    if let Some(first) = models.insert(name.clone(), i) {
                        issues.push(
                            format!("{place}.model"),
                            format!("duplicate model {name:?} (first at routes[{first}])"),
                        );
                        ok = false;
                    }
                }
                if r.rewrite.is_some() {
                    issues.push(format!("{place}.rewrite"), "only path_prefix routes can rewrite paths");
                }
                if let Some(up) = &r.upstream_model {
                    if all_known && !named.iter().any(|b| is_upstream.get(b) == Some(&true)) {
                        issues.push(
                            format!("{place}.upstream_model"),
                            "every backend of this route runs in-process; upstream_model applies to upstream backends",
                        );
                    }
                    ok &= check_name(up, &format!("{place}.upstream_model"), issues);
                }
                ok.then(|| RouteKind::Model { name: name.clone(), upstream_model: r.upstream_model.clone() })
            }
            (None, Some(prefix)) => {
                let place_p = format!("{place}.path_prefix");
                let prefix = check_prefix(prefix, &place_p, issues);
                if let Some(p) = &prefix {
                    if p == "/v2/" || p.starts_with("/v2/") {
                        issues.push(&place_p, format!("{p:?} overlaps the Open Inference Protocol paths under /v2/; route models with `model:`"));
                    } else if let Some(first) = prefixes.insert(p.clone(), i) {
                        issues.push(&place_p, format!("duplicate path_prefix {p:?} (first at routes[{first}])"));
                    }
                }
                for b in &named {
                    if is_upstream.get(b) == Some(&false) {
                        issues.push(
                            &backend_place,
                            format!("backend {b:?} is an ONNX model; path_prefix routes need upstream backends"),
                        );
                    }
                    if speaks_grpc.contains(b) {
                        issues.push(
                            &backend_place,
                            format!(
                                "backend {b:?} speaks gRPC (protocol: grpc); a path_prefix route forwards plain HTTP \
                                 as it is, so it needs an HTTP upstream (route the model with `model:` instead)"
                            ),
                        );
                    }
                }
                if r.upstream_model.is_some() {
                    issues.push(format!("{place}.upstream_model"), "only model routes name an upstream model");
                }
                if r.shadow.is_some() {
                    issues.push(
                        format!("{place}.shadow"),
                        "shadow traffic applies to model routes, not path_prefix routes",
                    );
                }
                let rewrite = r.rewrite.as_ref().and_then(|w| check_prefix(w, &format!("{place}.rewrite"), issues));
                prefix.map(|prefix| RouteKind::Prefix { prefix, rewrite })
            }
            (Some(_), Some(_)) => {
                issues.push(&place, "set either `model` or `path_prefix`, not both");
                None
            }
            (None, None) => {
                issues.push(&place, "missing `model: <name>` or `path_prefix: /<path>/`");
                None
            }
        };
        if let (Some(kind), Some(strategy), true) = (kind, strategy, all_known) {
            let max_concurrency =
                r.max_concurrency.map(|n| count(Some(n), 1, 1_000_000, &format!("{place}.max_concurrency"), issues));
            let overrides = r.overrides.as_deref().and_then(|o| overrides(o, &format!("{place}.overrides"), issues));
            let validation =
                r.validation.as_ref().map(|v| quality::validation(v, &format!("{place}.validation"), issues));
            let drift = r.drift.as_ref().map(|d| quality::drift(d, &format!("{place}.drift"), issues));
            let performance =
                r.performance.as_ref().map(|p| quality::performance(p, &format!("{place}.performance"), issues));
            let capture = r.capture.as_ref().map(|c| quality::capture(c, &format!("{place}.capture"), issues));
            let schedule = r.schedule.as_ref().and_then(|s| quality::schedule(s, &format!("{place}.schedule"), issues));
            out.push(RouteSpec {
                kind,
                strategy,
                shadow,
                max_concurrency,
                overrides,
                validation,
                drift,
                performance,
                capture,
                schedule,
            });
        }
    }
    out
}

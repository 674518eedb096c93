//! Data quality in routes.yaml: a backend's reference profile (`onnx.profile`), and per route
//! input validation (`validation:`) and drift detection (`drift:`) against it.

use super::raw::{RawCapture, RawDrift, RawPerformance, RawSchedule, RawValidation};
use super::*;
use crate::quality::cron::Cron;
use crate::quality::profile::Profile;
use crate::quality::Schedule;
use std::sync::Arc;

/// A reference profile named by an ONNX backend, read and checked when the config was read.
#[derive(Debug, Clone, PartialEq)]
pub struct ProfileRef {
    /// The file, resolved against the config file's folder.
    pub path: PathBuf,
    /// Its content.
    pub profile: Arc<Profile>,
}

/// What a route does with a row outside its variant's profile.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnInvalid {
    /// Count it (`modelgate_invalid_inputs_total{route,feature}`) and answer as usual.
    Count,
    /// Answer 400 naming the feature and the bound.
    Reject,
}

/// Most features named in `validation.features` or `drift.features` (each is a metric label).
pub const MAX_LABELLED_FEATURES: usize = 32;

/// `routes[i].validation:` — rows checked against the answering variant's profile.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct ValidationSpec {
    /// Count or reject.
    pub on_invalid: OnInvalid,
    /// Share of the profile's range allowed beyond its min and max (0.1 = 10%).
    pub margin: f64,
    /// Features counted under their own label; others under `feature="other"`. Empty: the
    /// first [`MAX_LABELLED_FEATURES`] of the profile.
    pub features: Vec<String>,
}

/// `routes[i].drift:` — live inputs per variant against its profile, over a sliding window.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct DriftSpec {
    /// How far back the window reaches.
    pub window: Duration,
    /// Fewer rows in the window than this is no verdict.
    pub min_samples: u64,
    /// Population stability index at or above which a feature may be drifted.
    pub psi: f64,
    /// The two-sample test's p-value below which a feature may be drifted. A feature is drifted
    /// when both thresholds are crossed: the change is material and not chance.
    pub p_value: f64,
    /// Features judged and exported as `modelgate_feature_drift{route,feature}`. Empty: every
    /// feature is judged, none exported.
    pub features: Vec<String>,
    /// Also judge the model's outputs against the profile's `outputs` (which must then be of
    /// this variant's model): events only, no gauges.
    pub outputs: bool,
}

/// `routes[i].performance:` — accuracy from label feedback per variant against a floor.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct PerformanceSpec {
    /// How far back the window reaches.
    pub window: Duration,
    /// Fewer scored rows than this is no verdict.
    pub min_samples: u64,
    /// Accuracy below which a variant is degraded (with `max_drop`: filled in per variant from
    /// its profile's reference accuracy).
    pub floor: f64,
    /// The floor is the variant's profile's reference accuracy less this.
    pub max_drop: Option<f64>,
    /// Confidence of the bound (degraded when even the upper bound is below the floor).
    pub confidence: f64,
}

pub(super) fn performance(raw: &RawPerformance, place: &str, issues: &mut Issues) -> PerformanceSpec {
    let window = duration(&raw.window, Duration::from_secs(600), &format!("{place}.window"), issues);
    let min_samples = raw.min_samples.unwrap_or(200).max(1);
    match (raw.floor, raw.max_drop) {
        (Some(f), None) if !(f > 0.0 && f <= 1.0) => {
            issues.push(format!("{place}.floor"), format!("an accuracy between 0 and 1, got {f}"));
        }
        (None, Some(d)) if !(0.0..1.0).contains(&d) => {
            issues.push(format!("{place}.max_drop"), format!("an accuracy drop between 0 and 1, got {d}"));
        }
        (Some(_), None) | (None, Some(_)) => {}
        _ => issues.push(
            place,
            "set either `floor` (an accuracy) or `max_drop` (below the profile's reference accuracy), not both",
        ),
    }
    let confidence = raw.confidence.unwrap_or(0.95);
    if !(0.5..1.0).contains(&confidence) {
        issues.push(format!("{place}.confidence"), format!("must be at least 0.5 and below 1, got {confidence}"));
    }
    PerformanceSpec { window, min_samples, floor: raw.floor.unwrap_or(0.0), max_drop: raw.max_drop, confidence }
}

/// `routes[i].capture:` — answers (inputs, outputs, variant) and their feedback as JSON Lines.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct CaptureSpec {
    /// The folder, as written (resolved against the config file's folder when started).
    pub dir: PathBuf,
    /// Percent of answers captured (feedback on a captured answer always is).
    pub sample_percent: f64,
    /// A file is closed (fsynced) and a new one started at this size.
    pub max_file_bytes: u64,
    /// ... or at this age.
    pub max_file_age: Duration,
    /// Lines waiting for the writer at most; beyond it lines are dropped and counted.
    pub queue: usize,
    /// A `labelled_data_ready` event after this many newly captured label rows (none if unset).
    pub ready_after: Option<u64>,
    /// Every written line is also POSTed here as a CloudEvent (as KServe's payload logger does).
    pub post: Option<http::Uri>,
}

pub(super) fn capture(raw: &RawCapture, place: &str, issues: &mut Issues) -> CaptureSpec {
    let sample_percent = raw.sample_percent.unwrap_or(100.0);
    percent(sample_percent, &format!("{place}.sample_percent"), issues);
    let max_file_bytes = raw.max_file_bytes.unwrap_or(64 << 20);
    if max_file_bytes < 1024 {
        issues.push(format!("{place}.max_file_bytes"), format!("must be at least 1024, got {max_file_bytes}"));
    }
    if raw.dir.is_empty() {
        issues.push(format!("{place}.dir"), "name a folder");
    }
    CaptureSpec {
        dir: PathBuf::from(&raw.dir),
        sample_percent,
        max_file_bytes,
        max_file_age: duration(&raw.max_file_age, Duration::from_secs(3600), &format!("{place}.max_file_age"), issues),
        queue: count(raw.queue, 4096, 1_000_000, &format!("{place}.queue"), issues),
        post: raw.post.as_ref().and_then(|u| match u.parse::<http::Uri>() {
            Ok(uri) if uri.scheme_str() == Some("http") && uri.authority().is_some() => Some(uri),
            _ => {
                issues.push(
                    format!("{place}.post"),
                    format!("invalid URL {u:?}: write it like \"http://host:port/path\""),
                );
                None
            }
        }),
        ready_after: raw.ready_after.filter(|n| {
            if *n == 0 {
                issues.push(format!("{place}.ready_after"), "must be at least 1 row");
            }
            *n > 0
        }),
    }
}

pub(super) fn schedule(raw: &RawSchedule, place: &str, issues: &mut Issues) -> Option<Schedule> {
    match (&raw.every, &raw.cron) {
        (Some(every), None) => {
            let every = duration(&Some(every.clone()), Duration::from_secs(86_400), &format!("{place}.every"), issues);
            if every < Duration::from_secs(1) {
                issues.push(format!("{place}.every"), format!("must be at least 1s, got {every:?}"));
            }
            Some(Schedule::Every(every))
        }
        (None, Some(text)) => match Cron::parse(text) {
            Ok(cron) => Some(Schedule::Cron(cron, text.clone())),
            Err(e) => {
                issues.push(format!("{place}.cron"), e);
                None
            }
        },
        _ => {
            issues.push(place, "give either `every: 24h` or `cron: \"0 3 * * *\"` (UTC), not both and not neither");
            None
        }
    }
}

pub(super) fn profile(base: &Path, path: &str, place: &str, issues: &mut Issues) -> Option<ProfileRef> {
    let path = readable_file(base, path, place, "profile", issues)?;
    match Profile::load(&path) {
        Ok(profile) => Some(ProfileRef { path, profile: Arc::new(profile) }),
        Err(e) => {
            issues.push(place, e);
            None
        }
    }
}

pub(super) fn validation(raw: &RawValidation, place: &str, issues: &mut Issues) -> ValidationSpec {
    let on_invalid = match raw.on_invalid.as_deref() {
        None | Some("count") => OnInvalid::Count,
        Some("reject") => OnInvalid::Reject,
        Some(other) => {
            issues.push(format!("{place}.on_invalid"), format!("unknown value {other:?}: use `count` or `reject`"));
            OnInvalid::Count
        }
    };
    let margin = raw.margin.unwrap_or(0.1);
    if !(margin.is_finite() && (0.0..=10.0).contains(&margin)) {
        issues
            .push(format!("{place}.margin"), format!("must be between 0 and 10 (a share of the range), got {margin}"));
    }
    let features = features(raw.features.as_deref(), &format!("{place}.features"), issues);
    ValidationSpec { on_invalid, margin, features }
}

pub(super) fn drift(raw: &RawDrift, place: &str, issues: &mut Issues) -> DriftSpec {
    let window = duration(&raw.window, Duration::from_secs(600), &format!("{place}.window"), issues);
    if window < Duration::from_secs(1) {
        issues.push(format!("{place}.window"), format!("must be at least 1s, got {window:?}"));
    }
    let min_samples = raw.min_samples.unwrap_or(500);
    if min_samples < 10 {
        issues.push(format!("{place}.min_samples"), format!("must be at least 10, got {min_samples}"));
    }
    let psi = raw.psi.unwrap_or(0.2);
    if !(psi.is_finite() && psi > 0.0) {
        issues.push(format!("{place}.psi"), format!("must be above 0, got {psi}"));
    }
    let p_value = raw.p_value.unwrap_or(0.01);
    if !(p_value > 0.0 && p_value < 1.0) {
        issues.push(format!("{place}.p_value"), format!("must be between 0 and 1, got {p_value}"));
    }
    let features = features(raw.features.as_deref(), &format!("{place}.features"), issues);
    DriftSpec { window, min_samples, psi, p_value, features, outputs: raw.outputs.unwrap_or(false) }
}

fn features(raw: Option<&[String]>, place: &str, issues: &mut Issues) -> Vec<String> {
    let list = raw.unwrap_or_default();
    if list.len() > MAX_LABELLED_FEATURES {
        issues.push(
            place,
            format!("at most {MAX_LABELLED_FEATURES} features (each is a metric label), got {}", list.len()),
        );
    }
    for (i, f) in list.iter().enumerate() {
        if list[..i].contains(f) {
            issues.push(format!("{place}[{i}]"), format!("{f:?} is named twice"));
        }
    }
    list.iter().take(MAX_LABELLED_FEATURES).cloned().collect()
}

/// A route that validates or watches drift needs a profile on every variant, and the features
/// it names must be in each of them.
pub(super) fn check_route(route: &RouteSpec, backends: &[BackendSpec], place: &str, issues: &mut Issues) {
    if route.performance.as_ref().is_some_and(|p| p.max_drop.is_some()) {
        for b in route.strategy.backends() {
            let Some(spec) = backends.iter().find(|s| s.name == b) else { continue };
            let referenced = match &spec.kind {
                BackendKind::Onnx(OnnxSpec { profile: Some(p), .. }) => p.profile.reference.is_some(),
                _ => false,
            };
            if !referenced {
                issues.push(
                    format!("{place}.performance.max_drop"),
                    format!(
                        "backend {b:?} has no profile with a reference accuracy (make its profile from labelled \
                         rows), so there is nothing to drop from: set `floor` instead"
                    ),
                );
            }
        }
    }
    let named: Vec<(&str, &Vec<String>)> = route
        .validation
        .iter()
        .map(|v| ("validation", &v.features))
        .chain(route.drift.iter().map(|d| ("drift", &d.features)))
        .collect();
    if named.is_empty() {
        return;
    }
    for b in route.strategy.backends() {
        let Some(spec) = backends.iter().find(|s| s.name == b) else { continue };
        let profile = match &spec.kind {
            BackendKind::Onnx(OnnxSpec { profile: Some(p), .. }) => p,
            _ => {
                let what = named.iter().map(|(w, _)| *w).collect::<Vec<_>>().join(" and ");
                issues.push(
                    place,
                    format!(
                        "{what} need a profile on every variant: backend {b:?} has none (add `profile: \
                         models/x.profile.json` to its `onnx:`; upstream backends cannot be checked)"
                    ),
                );
                continue;
            }
        };
        for (what, list) in &named {
            for (i, f) in list.iter().enumerate() {
                if profile.profile.feature(f).is_none() {
                    issues.push(
                        format!("{place}.{what}.features[{i}]"),
                        format!(
                            "{f:?} is not a feature of {} (features are named f0, f1, ...)",
                            profile.path.display()
                        ),
                    );
                }
            }
        }
    }
}

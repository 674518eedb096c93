//! The `analysis:` sections of routes.yaml, validated into the plans of [`super::plan`].

use super::*;

/// The checks of one analysis (`analysis:`, or an A/B test's `guardrails:`).
pub(super) fn criteria(a: &RawAnalysis, ap: &str, issues: &mut Issues) -> CanaryCriteria {
    let fraction = |v: Option<f64>, name: &str, issues: &mut Issues| {
        if let Some(x) = v {
            if !(x.is_finite() && (0.0..=1.0).contains(&x)) {
                issues.push(format!("{ap}.{name}"), format!("must be a fraction between 0 and 1, got {x}"));
            }
        }
        v
    };
    let max_error_rate = fraction(a.max_error_rate.or(Some(0.01)), "max_error_rate", issues);
    let max_error_rate_increase = fraction(a.max_error_rate_increase, "max_error_rate_increase", issues);
    let alpha = a.alpha.unwrap_or(0.01);
    if !(alpha > 0.0 && alpha < 0.5) {
        issues.push(format!("{ap}.alpha"), format!("must be between 0 and 0.5, got {alpha}"));
    }
    if let Some(r) = a.max_p99_ratio {
        if !(r.is_finite() && r >= 1.0) {
            issues.push(format!("{ap}.max_p99_ratio"), format!("must be 1 or more, got {r}"));
        }
    }
    let business = a.business.as_ref().and_then(|b| {
        let metric = metric(&b.metric, &format!("{ap}.business.metric"), issues)?;
        Some(BusinessGuard { metric, margin: b.margin, min_samples: b.min_samples.unwrap_or(200) })
    });
    CanaryCriteria {
        min_samples: a.min_samples.unwrap_or(100),
        max_error_rate,
        max_error_rate_increase,
        max_p99_ratio: a.max_p99_ratio,
        business,
        alpha,
    }
}

pub(super) fn metric(name: &str, place: &str, issues: &mut Issues) -> Option<Metric> {
    match name {
        "conversion" => Some(Metric::Conversion),
        "accuracy" => Some(Metric::Accuracy),
        "reward" => Some(Metric::Reward),
        other => {
            issues.push(place, format!("unknown metric {other:?}: conversion, accuracy or reward"));
            None
        }
    }
}

pub(super) fn ab_plan(a: &RawAbAnalysis, place: &str, issues: &mut Issues) -> Option<AbPlan> {
    let metric = metric(&a.metric, &format!("{place}.metric"), issues)?;
    let alpha = a.alpha.unwrap_or(0.05);
    if !(alpha > 0.0 && alpha < 0.5) {
        issues.push(format!("{place}.alpha"), format!("must be between 0 and 0.5, got {alpha}"));
    }
    let effect = a.effect.unwrap_or(0.05);
    if !(effect.is_finite() && effect > 0.0) {
        issues.push(
            format!("{place}.effect"),
            format!("must be above 0 (the smallest difference worth finding), got {effect}"),
        );
    }
    let guardrails = a.guardrails.as_ref().map(|g| {
        no_checks(g, &format!("{place}.guardrails"), issues);
        criteria(g, &format!("{place}.guardrails"), issues)
    });
    Some(AbPlan {
        criteria: AbCriteria {
            metric,
            alpha,
            tau2: effect * effect,
            min_samples: a.min_samples.unwrap_or(100),
            guardrails,
        },
        interval: duration(&a.interval, Duration::from_secs(10), &format!("{place}.interval"), issues),
        auto_promote: a.auto_promote,
        checks: checks(a.checks.as_deref().unwrap_or_default(), place, issues),
    })
}

pub(super) fn canary_plan(
    steps: &[RawStep],
    analysis: Option<&RawAnalysis>,
    place: &str,
    issues: &mut Issues,
) -> CanaryPlan {
    if steps.is_empty() {
        issues.push(format!("{place}.steps"), "give at least one step, or leave `steps` out");
    }
    let steps = steps
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let sp = format!("{place}.steps[{i}]");
            percent(s.weight, &format!("{sp}.weight"), issues);
            let pause = if s.pause == "until_promoted" {
                None
            } else {
                Some(duration(&Some(s.pause.clone()), Duration::from_secs(60), &format!("{sp}.pause"), issues))
            };
            Step { weight: s.weight, pause }
        })
        .collect();
    let default = RawAnalysis::default();
    let a = analysis.unwrap_or(&default);
    let ap = format!("{place}.analysis");
    let criteria = criteria(a, &ap, issues);
    let on_inconclusive = match a.on_inconclusive.as_deref() {
        None | Some("hold") => OnInconclusive::Hold,
        Some("rollback") => OnInconclusive::Rollback,
        Some(other) => {
            issues.push(format!("{ap}.on_inconclusive"), format!("{other:?} is neither `hold` nor `rollback`"));
            OnInconclusive::Hold
        }
    };
    let failure_limit = a.failure_limit.unwrap_or(2);
    if failure_limit == 0 {
        issues.push(format!("{ap}.failure_limit"), "must be at least 1");
    }
    CanaryPlan {
        steps,
        criteria,
        interval: duration(&a.interval, Duration::from_secs(10), &format!("{ap}.interval"), issues),
        failure_limit: failure_limit.max(1),
        inconclusive_deadline: duration(
            &a.inconclusive_deadline,
            Duration::from_secs(600),
            &format!("{ap}.inconclusive_deadline"),
            issues,
        ),
        on_inconclusive,
        checks: checks(a.checks.as_deref().unwrap_or_default(), &ap, issues),
    }
}

/// Most checks an analysis runs.
const MAX_CHECKS: usize = 16;

/// Where Prometheus checks are not run (yet): blue-green, and inside A/B guardrails (an A/B
/// test's checks go in its `analysis.checks`).
pub(super) fn no_checks(a: &RawAnalysis, ap: &str, issues: &mut Issues) {
    if a.checks.is_some() {
        issues.push(
            format!("{ap}.checks"),
            "Prometheus checks run in a canary's or an A/B test's analysis (not here yet)",
        );
    }
}

fn checks(raw: &[RawCheck], ap: &str, issues: &mut Issues) -> Vec<MetricCheck> {
    if raw.len() > MAX_CHECKS {
        issues.push(format!("{ap}.checks"), format!("at most {MAX_CHECKS} checks, got {}", raw.len()));
    }
    let mut out: Vec<MetricCheck> = Vec::new();
    for (i, c) in raw.iter().enumerate().take(MAX_CHECKS) {
        let cp = format!("{ap}.checks[{i}]");
        let named = check_name(&c.name, &format!("{cp}.name"), issues);
        if named && raw[..i].iter().any(|o| o.name == c.name) {
            issues.push(format!("{cp}.name"), format!("another check is named {:?}", c.name));
        }
        let prometheus = match c.prometheus.parse::<http::Uri>() {
            Ok(u) if u.scheme_str() == Some("http") && u.host().is_some_and(|h| !h.is_empty()) => Some(u),
            Ok(_) => {
                issues.push(
                    format!("{cp}.prometheus"),
                    format!("{:?} is not an http:// URL of a Prometheus server", c.prometheus),
                );
                None
            }
            Err(e) => {
                issues.push(format!("{cp}.prometheus"), format!("invalid URL {:?}: {e}", c.prometheus));
                None
            }
        };
        if c.query.trim().is_empty() || c.query.len() > 4096 {
            issues.push(format!("{cp}.query"), "write a PromQL query of at most 4096 characters");
        }
        for (field, v) in [("min", c.min), ("max", c.max)] {
            if v.is_some_and(|v| !v.is_finite()) {
                issues.push(format!("{cp}.{field}"), "must be a finite number");
            }
        }
        match (c.min, c.max) {
            (None, None) => issues.push(cp.clone(), "give a bound: min, max or both"),
            (Some(lo), Some(hi)) if lo > hi => issues.push(format!("{cp}.min"), format!("{lo} is above max {hi}")),
            _ => {}
        }
        if let Some(prometheus) = prometheus {
            out.push(MetricCheck { name: c.name.clone(), prometheus, query: c.query.clone(), min: c.min, max: c.max });
        }
    }
    out
}

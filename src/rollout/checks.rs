//! Prometheus checks of canary and A/B analyses: each plan's PromQL queries run on their own
//! timer, off the controller's lock, with `{{route}}`, `{{variant}}` (the canary, or each A/B
//! arm but control) and `{{window}}` (the step so far) substituted; their verdict is kept per
//! route, variant and step for the analysis to read.
//! No data — an empty result, NaN, an error answer, Prometheus unreachable — is Inconclusive,
//! never Fail.

use super::analysis::Verdict;
use super::control::{lock, Controller};
use super::fleet::epoch;
use crate::config::plan::MetricCheck;
use crate::config::Strategy;
use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;
use percent_encoding::{utf8_percent_encode, NON_ALPHANUMERIC};
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

/// How long one query may take.
const QUERY_TIMEOUT: Duration = Duration::from_secs(2);
/// Largest answer read from Prometheus.
const MAX_ANSWER: usize = 1 << 20;

/// The last verdict of each route's checks by variant: the step it belongs to, when, and what.
#[derive(Debug)]
pub(super) struct CheckResults {
    client: Client<HttpConnector, Empty<Bytes>>,
    last: Mutex<HashMap<(String, String), Checked>>,
}

/// A variant's checks as last run: the step (epoch) they belong to, when (ms), the verdict.
type Checked = (u64, u64, Verdict);

impl Default for CheckResults {
    fn default() -> Self {
        CheckResults { client: Client::builder(TokioExecutor::new()).build_http(), last: Mutex::default() }
    }
}

/// One check to run: where, what, and the substitutions.
struct Due {
    route: String,
    epoch: u64,
    checks: Vec<MetricCheck>,
    variants: Vec<String>,
    window_s: u64,
}

impl Controller {
    /// The Prometheus checks' verdict for a variant in its route's current step (Pass when the
    /// plan has none).
    pub(super) fn checks_verdict(
        &self,
        route: &str,
        variant: &str,
        checks: &[MetricCheck],
        status_epoch: u64,
    ) -> Verdict {
        if checks.is_empty() {
            return Verdict::Pass;
        }
        match lock(&self.checks.last).get(&(route.to_string(), variant.to_string())) {
            Some((e, _, verdict)) if *e == status_epoch => verdict.clone(),
            _ => Verdict::Inconclusive("the Prometheus checks have not run in this step yet".to_string()),
        }
    }

    /// One round of Prometheus checks: every canary with checks whose interval is due.
    pub async fn run_checks(&self) {
        if self.fleet.get().is_some_and(|f| f.may_decide().is_err()) {
            return; // only the deciding replica asks
        }
        let now = self.clock.now_ms();
        let due: Vec<Due> = {
            let inner = self.inner.lock().await;
            let last = lock(&self.checks.last);
            inner
                .config
                .routes
                .iter()
                .filter_map(|spec| {
                    let state = inner.routes.get(spec.name())?;
                    let (checks, interval, variants) = match &spec.strategy {
                        Strategy::Canary { canary, plan: Some(plan), .. } => {
                            (&plan.checks, plan.interval, vec![canary.clone()])
                        }
                        Strategy::AbTest { arms, control, plan: Some(plan), .. } => {
                            let stopped = &state.status.stopped_arms;
                            let judged = arms.iter().filter(|(a, _)| a != control && !stopped.contains(a));
                            (&plan.checks, plan.interval, judged.map(|(a, _)| a.clone()).collect())
                        }
                        _ => return None,
                    };
                    let e = epoch(&state.status);
                    let fresh = variants
                        .first()
                        .and_then(|v| last.get(&(spec.name().to_string(), v.clone())))
                        .is_some_and(|(le, at, _)| *le == e && now.saturating_sub(*at) < interval.as_millis() as u64);
                    if checks.is_empty() || fresh {
                        return None;
                    }
                    let started = state.status.progress.as_ref().map_or(now, |p| p.step_started_ms);
                    Some(Due {
                        route: spec.name().to_string(),
                        epoch: e,
                        checks: checks.clone(),
                        variants,
                        window_s: (now.saturating_sub(started) / 1000).max(1),
                    })
                })
                .collect()
        };
        for d in due {
            for variant in &d.variants {
                let mut verdict = Verdict::Pass;
                for check in &d.checks {
                    let query = check
                        .query
                        .replace("{{route}}", &d.route)
                        .replace("{{variant}}", variant)
                        .replace("{{window}}", &format!("{}s", d.window_s));
                    let one = judge(check, query_value(&self.checks.client, &check.prometheus, &query).await);
                    verdict = match (verdict, one) {
                        (Verdict::Fail(w), _) => Verdict::Fail(w),
                        (_, Verdict::Fail(w)) => Verdict::Fail(w),
                        (Verdict::Inconclusive(w), _) => Verdict::Inconclusive(w),
                        (_, other) => other,
                    };
                }
                lock(&self.checks.last).insert((d.route.clone(), variant.clone()), (d.epoch, now, verdict));
            }
        }
    }
}

/// A check's verdict on its query's value (`Err`: why there is none).
fn judge(check: &MetricCheck, value: Result<f64, String>) -> Verdict {
    let name = &check.name;
    match value {
        Err(why) => Verdict::Inconclusive(format!("check {name}: no data ({why})")),
        Ok(v) if check.min.is_some_and(|lo| v < lo) => {
            Verdict::Fail(format!("check {name}: {v} is below its minimum {}", check.min.unwrap_or_default()))
        }
        Ok(v) if check.max.is_some_and(|hi| v > hi) => {
            Verdict::Fail(format!("check {name}: {v} is above its maximum {}", check.max.unwrap_or_default()))
        }
        Ok(_) => Verdict::Pass,
    }
}

/// The first sample of an instant query.
async fn query_value(
    client: &Client<HttpConnector, Empty<Bytes>>,
    base: &http::Uri,
    query: &str,
) -> Result<f64, String> {
    let url = format!(
        "{}/api/v1/query?query={}",
        base.to_string().trim_end_matches('/'),
        utf8_percent_encode(query, NON_ALPHANUMERIC)
    );
    let uri: http::Uri = url.parse().map_err(|e| format!("bad query URL: {e}"))?;
    let resp = tokio::time::timeout(QUERY_TIMEOUT, client.get(uri))
        .await
        .map_err(|_| format!("Prometheus did not answer within {QUERY_TIMEOUT:?}"))?
        .map_err(|e| format!("Prometheus unreachable: {e}"))?;
    let status = resp.status();
    let body = tokio::time::timeout(QUERY_TIMEOUT, Limited::new(resp.into_body(), MAX_ANSWER).collect())
        .await
        .map_err(|_| "Prometheus' answer was too slow".to_string())?
        .map_err(|e| format!("Prometheus' answer could not be read: {e}"))?
        .to_bytes();
    let answer: serde_json::Value =
        serde_json::from_slice(&body).map_err(|e| format!("Prometheus answered {status} with no JSON: {e}"))?;
    if answer["status"] != "success" {
        return Err(format!("Prometheus refused the query: {}", answer["error"].as_str().unwrap_or("no reason given")));
    }
    value_of(&answer["data"])
}

/// The value in a query answer's `data`: the first sample of a vector, or a scalar.
fn value_of(data: &serde_json::Value) -> Result<f64, String> {
    let sample = match data["resultType"].as_str() {
        Some("vector") => data["result"].get(0).map(|r| &r["value"]).ok_or("an empty result")?,
        Some("scalar") => &data["result"],
        other => return Err(format!("a {} result, not a vector or scalar", other.unwrap_or("missing"))),
    };
    let v: f64 = sample[1].as_str().and_then(|s| s.parse().ok()).ok_or("a sample without a number")?;
    if v.is_nan() {
        return Err("NaN".to_string());
    }
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn check(min: Option<f64>, max: Option<f64>) -> MetricCheck {
        MetricCheck { name: "c".into(), prometheus: "http://127.0.0.1:9".parse().unwrap(), query: "q".into(), min, max }
    }

    #[test]
    fn no_data_is_inconclusive_and_bounds_fail() {
        let empty = json!({"resultType": "vector", "result": []});
        assert_eq!(value_of(&empty), Err("an empty result".to_string()));
        let nan = json!({"resultType": "vector", "result": [{"metric": {}, "value": [1.0, "NaN"]}]});
        assert!(value_of(&nan).is_err());
        let one = json!({"resultType": "vector", "result": [{"metric": {}, "value": [1.0, "0.25"]}]});
        assert_eq!(value_of(&one), Ok(0.25));
        assert_eq!(value_of(&json!({"resultType": "scalar", "result": [1.0, "3"]})), Ok(3.0));
        assert!(value_of(&json!({"resultType": "matrix", "result": []})).is_err());
        assert!(matches!(judge(&check(None, Some(1.0)), Err("x".into())), Verdict::Inconclusive(_)));
        assert!(matches!(judge(&check(None, Some(1.0)), Ok(2.0)), Verdict::Fail(_)));
        assert!(matches!(judge(&check(Some(1.0), None), Ok(0.5)), Verdict::Fail(_)));
        assert_eq!(judge(&check(Some(0.0), Some(1.0)), Ok(0.5)), Verdict::Pass);
    }
}

//! Data quality of live inputs against a model's reference profile. Rooms:
//! - `profile` — what the reference data looked like, made by `modelgate profile`;
//! - `validate` — rows outside the profile, counted or rejected;
//! - `drift` — live rows over a sliding window against the profile (PSI, chi-square);
//! - `performance` — accuracy from label feedback over a sliding window against a floor;
//! - `capture` — answers and their feedback as rotating JSON Lines, never blocking;
//! - `evaluate` — the CI model gate's statistics (a candidate against the baseline).
//!
//! A lower room: it knows `config`, `protocol` and `metrics`, never `routing`, `rollout` or
//! `server`.

pub mod capture;
mod capture_post;
pub mod cron;
pub mod drift;
pub mod evaluate;
pub mod performance;
pub mod profile;
pub mod validate;

use crate::config::{DriftSpec, PerformanceSpec, ProfileRef, RouteSpec};
use crate::protocol::{Tensor, TensorData};
use drift::DriftWindow;
use performance::LabelWindow;
use profile::Profile;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use validate::{Validator, Violation};

/// Where a profiled output column is in an answer: the output's name and the column.
pub type OutputColumn = (String, usize);

/// What a variant checks its inputs with: made with each routing table; the drift window
/// itself lives in the [`Registry`] so it outlasts table swaps.
#[derive(Debug)]
pub struct VariantQuality {
    /// The variant's reference profile, if its backend names one.
    pub profile: Option<Arc<Profile>>,
    /// The position of the profile's input among the model's inputs.
    input: usize,
    /// When the route has `validation:`.
    pub validator: Option<Validator>,
    /// When the route has `drift:`.
    pub drift: Option<Arc<DriftWindow>>,
    /// When the route has `drift: {outputs: true}`: the outputs' window, and where each of the
    /// profile's output columns is (output name, column).
    pub output_drift: Option<(Arc<DriftWindow>, Vec<OutputColumn>)>,
    /// When the route has `performance:`.
    pub performance: Option<Arc<LabelWindow>>,
    /// When the route has `capture:` (one writer per route).
    pub capture: Option<Arc<capture::Capture>>,
}

impl VariantQuality {
    /// The quality checks of a variant of `route` whose model takes `inputs` (names in model
    /// order); `None` when the route asks for none or the profile names no input of the model.
    pub fn new(
        route: &RouteSpec,
        variant: &str,
        profile: Option<&ProfileRef>,
        inputs: &[&str],
        registry: &Registry,
        capture: Option<Arc<capture::Capture>>,
        counter: impl Fn(&str) -> metrics::Counter,
    ) -> Option<VariantQuality> {
        let profile = profile.map(|p| &p.profile);
        let performance = route.performance.as_ref().and_then(|p| {
            let floor = match p.max_drop {
                None => p.floor,
                Some(drop) => profile?.reference.as_ref()?.accuracy - drop,
            };
            Some(registry.labels(route.name(), variant, &PerformanceSpec { floor, ..p.clone() }))
        });
        let input = profile.and_then(|p| inputs.iter().position(|i| *i == p.input));
        let (validator, drift) = match (profile, input) {
            (Some(p), Some(_)) => (
                route.validation.as_ref().map(|v| Validator::new(p, v, counter)),
                route.drift.as_ref().map(|d| registry.window(route.name(), variant, p, d)),
            ),
            _ => (None, None),
        };
        let output_drift = match (profile, &route.drift) {
            (Some(p), Some(d)) if d.outputs && !p.outputs.is_empty() => {
                let columns = p.outputs.iter().map(|f| output_column(&f.name)).collect();
                let as_features =
                    Arc::new(Profile { features: p.outputs.clone(), outputs: Vec::new(), ..(**p).clone() });
                let spec = DriftSpec { features: Vec::new(), ..d.clone() };
                Some((registry.window(route.name(), &format!("{variant}#outputs"), &as_features, &spec), columns))
            }
            _ => None,
        };
        if validator.is_none() && drift.is_none() && performance.is_none() && capture.is_none() {
            return None;
        }
        let input = input.unwrap_or(0);
        Some(VariantQuality { profile: profile.cloned(), input, validator, drift, output_drift, performance, capture })
    }

    /// Adds a request's outputs to the outputs' drift window, when the route watches them and
    /// every profiled output is in the answer.
    pub fn observe_outputs(&self, outputs: &[Tensor]) {
        let Some((window, columns)) = &self.output_drift else { return };
        let mut found = Vec::with_capacity(columns.len());
        let mut rows = usize::MAX;
        for (name, col) in columns {
            let Some(t) = outputs.iter().find(|t| t.name == *name) else { return };
            let n = t.shape.first().copied().unwrap_or(1);
            let width = t.data.len().checked_div(n).unwrap_or(0);
            if *col >= width.max(1) || matches!(t.data, TensorData::Bytes(_)) {
                return;
            }
            rows = rows.min(n);
            found.push((t, *col, width.max(1)));
        }
        if rows == usize::MAX {
            return;
        }
        let k = found.len();
        window.observe(rows, k, |idx| {
            let (i, j) = (idx / k, idx % k);
            let (t, col, width) = found[j];
            number(&t.data, i * width + col)
        });
    }

    /// Label feedback on an answer of this variant: `rows` scored, `right` of them right.
    pub fn labels(&self, rows: u64, right: u64) {
        if let Some(w) = &self.performance {
            w.add(rows, right);
        }
    }

    /// Checks and records a request's inputs (in model order). `Err` only when the route
    /// rejects invalid rows; a rejected request is not added to the drift window. Inputs that
    /// are not `[rows, features]` of a numeric type are left alone (the model will refuse them).
    pub fn observe(&self, inputs: &[Tensor]) -> Result<(), Violation> {
        let Some(profile) = &self.profile else { return Ok(()) };
        let Some(t) = inputs.get(self.input) else { return Ok(()) };
        let width = profile.features.len();
        let rows = match t.shape.as_slice() {
            [rows, w] if *w == width => *rows,
            [w] if *w == width => 1,
            _ => return Ok(()),
        };
        macro_rules! each {
            ($f:expr) => {
                match &t.data {
                    TensorData::Fp32(v) => $f(|i: usize| f64::from(v[i])),
                    TensorData::Fp64(v) => $f(|i: usize| v[i]),
                    TensorData::Int64(v) => $f(|i: usize| v[i] as f64),
                    TensorData::Int32(v) => $f(|i: usize| f64::from(v[i])),
                    TensorData::Fp16(v) => $f(|i: usize| v[i].to_f64()),
                    TensorData::Int16(v) => $f(|i: usize| f64::from(v[i])),
                    TensorData::Int8(v) => $f(|i: usize| f64::from(v[i])),
                    TensorData::Uint8(v) => $f(|i: usize| f64::from(v[i])),
                    TensorData::Bool(v) => $f(|i: usize| f64::from(u8::from(v[i]))),
                    TensorData::Bf16(v) => $f(|i: usize| v[i].to_f64()),
                    TensorData::Bytes(_) => return Ok(()),
                }
            };
        }
        if t.data.len() != rows * width {
            return Ok(());
        }
        if let Some(v) = &self.validator {
            if let Some(bad) = each!(|get| v.check(rows, get)) {
                if v.on_invalid == crate::config::OnInvalid::Reject {
                    return Err(bad);
                }
            }
        }
        if let Some(w) = &self.drift {
            each!(|get| w.observe(rows, width, get));
        }
        Ok(())
    }
}

/// Every variant's drift window, kept across routing tables for the gateway's life; a window
/// is made anew when its variant's profile or its route's `drift:` changes.
/// When a route is due for retraining (`schedule:`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Schedule {
    /// At every multiple of this since the epoch (every replica and restart agrees on them).
    Every(std::time::Duration),
    /// At every minute a cron expression (UTC) names; the text as written.
    Cron(cron::Cron, String),
}

#[derive(Debug, Default)]
pub struct Registry {
    windows: Mutex<HashMap<(String, String), Arc<DriftWindow>>>,
    labels: Mutex<HashMap<(String, String), Arc<LabelWindow>>>,
    captures: Mutex<HashMap<String, Arc<capture::Capture>>>,
    /// Per route: its schedule and the last instant looked at (ms), if seen.
    schedules: Mutex<HashMap<String, (Schedule, Option<u64>)>>,
}

impl Registry {
    /// The window of `variant` of `route`.
    pub fn window(&self, route: &str, variant: &str, profile: &Arc<Profile>, spec: &DriftSpec) -> Arc<DriftWindow> {
        let mut all = self.windows.lock().unwrap_or_else(|p| p.into_inner());
        let key = (route.to_string(), variant.to_string());
        if let Some(w) = all.get(&key) {
            if w.made_for.0 == *profile && w.made_for.1 == *spec {
                return w.clone();
            }
        }
        let w = Arc::new(DriftWindow::new(profile.clone(), spec.clone()));
        all.insert(key, w.clone());
        w
    }

    /// The label window of `variant` of `route`.
    pub fn labels(&self, route: &str, variant: &str, spec: &PerformanceSpec) -> Arc<LabelWindow> {
        let mut all = self.labels.lock().unwrap_or_else(|p| p.into_inner());
        let key = (route.to_string(), variant.to_string());
        match all.get(&key) {
            Some(w) if w.spec == *spec => w.clone(),
            _ => {
                let w = Arc::new(LabelWindow::new(spec.clone()));
                all.insert(key, w.clone());
                w
            }
        }
    }

    /// The capture of `route`, started when first asked for (or when its spec changed);
    /// `start` makes it.
    pub fn capture(
        &self,
        route: &str,
        spec: &crate::config::CaptureSpec,
        start: impl FnOnce() -> Result<capture::Capture, String>,
    ) -> Result<Arc<capture::Capture>, String> {
        let mut all = self.captures.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(c) = all.get(route).filter(|c| c.spec == *spec) {
            return Ok(c.clone());
        }
        let c = Arc::new(start()?);
        all.insert(route.to_string(), c.clone());
        Ok(c)
    }

    /// Writes out every capture queue (see [`capture::Capture::sync`]); false when one did not
    /// finish within `timeout`. Blocking: for shutdown.
    pub fn sync_captures(&self, timeout: std::time::Duration) -> bool {
        let all: Vec<_> = self.captures.lock().unwrap_or_else(|p| p.into_inner()).values().cloned().collect();
        all.iter().all(|c| c.sync(timeout))
    }

    /// Records a route's schedule (kept while unchanged), or forgets it (`None`).
    pub fn schedule(&self, route: &str, schedule: Option<&Schedule>) {
        let mut all = self.schedules.lock().unwrap_or_else(|p| p.into_inner());
        match schedule {
            None => {
                all.remove(route);
            }
            Some(s) => {
                if all.get(route).is_none_or(|(known, _)| known != s) {
                    all.insert(route.to_string(), (s.clone(), None));
                }
            }
        }
    }

    /// Whether `route`'s schedule came due since the last call: the due instant (ms) and the
    /// schedule. The first look only notes where the schedule stands, so a restart does not
    /// fire at once. A cron schedule is looked at minute by minute (the analysis ticks several
    /// times a minute); a minute the process did not look at is not made up for.
    pub fn due(&self, route: &str, now_ms: u64) -> Option<(u64, Schedule)> {
        let mut all = self.schedules.lock().unwrap_or_else(|p| p.into_inner());
        let (schedule, last) = all.get_mut(route)?;
        let (instant, matches) = match schedule {
            Schedule::Every(every) => {
                let ms = (every.as_millis() as u64).max(1);
                (now_ms / ms * ms, true)
            }
            Schedule::Cron(cron, _) => {
                let minute = now_ms / 60_000;
                (minute * 60_000, cron.matches(minute))
            }
        };
        let fired = matches && last.is_some_and(|l| instant > l);
        *last = Some(instant);
        fired.then(|| (instant, schedule.clone()))
    }

    /// Every window: (route, variant, window), sorted.
    pub fn all(&self) -> Vec<(String, String, Arc<DriftWindow>)> {
        let all = self.windows.lock().unwrap_or_else(|p| p.into_inner());
        let mut v: Vec<_> = all.iter().map(|((r, n), w)| (r.clone(), n.clone(), w.clone())).collect();
        v.sort_by(|a, b| (&a.0, &a.1).cmp(&(&b.0, &b.1)));
        v
    }
}

/// Where an output profile column is: `name` → (name, 0); `name[j]` → (name, j).
fn output_column(profiled: &str) -> (String, usize) {
    match profiled.strip_suffix(']').and_then(|s| s.rsplit_once('[')).and_then(|(n, j)| Some((n, j.parse().ok()?))) {
        Some((name, j)) => (name.to_string(), j),
        None => (profiled.to_string(), 0),
    }
}

/// Element `i` of numeric tensor data as a number (NaN for BYTES or beyond the end).
fn number(data: &TensorData, i: usize) -> f64 {
    let n = match data {
        TensorData::Fp32(v) => v.get(i).map(|x| f64::from(*x)),
        TensorData::Fp64(v) => v.get(i).copied(),
        TensorData::Int64(v) => v.get(i).map(|x| *x as f64),
        TensorData::Int32(v) => v.get(i).map(|x| f64::from(*x)),
        TensorData::Int16(v) => v.get(i).map(|x| f64::from(*x)),
        TensorData::Int8(v) => v.get(i).map(|x| f64::from(*x)),
        TensorData::Uint8(v) => v.get(i).map(|x| f64::from(*x)),
        TensorData::Bool(v) => v.get(i).map(|x| f64::from(u8::from(*x))),
        TensorData::Fp16(v) => v.get(i).map(|x| x.to_f64()),
        TensorData::Bf16(v) => v.get(i).map(|x| x.to_f64()),
        TensorData::Bytes(_) => None,
    };
    n.unwrap_or(f64::NAN)
}

//! Per route and variant, the last 15 minutes at 1 s resolution for the operator console:
//! requests/s, error rate, p50/p99 latency and the business metric of each second.
//!
//! A sampler task reads each variant's lifetime window once a second and stores the difference
//! from the last read, so the request path does no extra work. Memory is bounded whatever the
//! traffic: at most [`MAX_SERIES`] route × variant tracks of at most [`POINTS`] points each.
//!
//! Per-second latency quantiles: the lifetime window already keeps an HDR histogram of every
//! successful answer. Each track keeps one copy of it as of its last read (the same fixed-size
//! histogram, ~170 KB); a read walks the lifetime histogram once under the window's lock, takes
//! the buckets that grew (that second's observations, at the windows' 3-digit precision) and
//! brings the copy up to date. A second per-second histogram on the request path would cost
//! every request a record and the same memory again.

use super::window::Window;
use super::Telemetry;
use serde::Serialize;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Points kept per track: 15 minutes at one a second.
pub const POINTS: usize = 900;

/// Route × variant tracks kept; variants seen after that are not charted (counted apart).
pub const MAX_SERIES: usize = 128;

/// One second of one variant (values `NaN` when the second had no observation).
#[derive(Debug, Clone, Copy)]
struct Point {
    /// Unix time, seconds.
    t: u64,
    requests_per_s: f32,
    error_rate: f32,
    p50_ms: f32,
    p99_ms: f32,
    business: f32,
}

/// Business metrics in the order one is chosen for a track's chart.
const BUSINESS: [&str; 3] = ["accuracy", "conversion", "reward"];

/// One variant's track and what it last read.
#[derive(Debug)]
struct Track {
    points: std::collections::VecDeque<Point>,
    /// Lifetime counts at the last read: requests, errors, and per business metric (n, sum).
    requests: u64,
    errors: u64,
    goals: [(u64, f64); 3],
    /// The business metric charted: the first of [`BUSINESS`] that got samples.
    business: Option<usize>,
    /// The lifetime latency histogram as of the last read.
    latency: hdrhistogram::Histogram<u64>,
    at: std::time::Instant,
}

/// The per-second series of every route and variant.
#[derive(Debug, Default)]
pub struct Series {
    tracks: Mutex<HashMap<(String, String), Track>>,
    /// Variants not charted because [`MAX_SERIES`] tracks exist.
    untracked: std::sync::atomic::AtomicU64,
}

/// One variant's series, as columns (JSON-friendly: `null` where a second had no observation).
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct VariantSeries {
    /// Variant name.
    pub variant: String,
    /// Unix time of each point, seconds.
    pub t: Vec<u64>,
    /// Answered requests per second (assigned traffic).
    pub requests_per_s: Vec<f32>,
    /// 5xx share of that second's answers.
    pub error_rate: Vec<Option<f32>>,
    /// Median latency of that second's successful answers, ms.
    pub p50_ms: Vec<Option<f32>>,
    /// 99th percentile, ms.
    pub p99_ms: Vec<Option<f32>>,
    /// The business metric charted (`accuracy`, `conversion`, `reward`), if any feedback came.
    pub business_metric: Option<&'static str>,
    /// Its mean over that second's outcomes.
    pub business: Vec<Option<f32>>,
}

/// Kept as `f32` (7 digits are plenty for a chart, and they print short in JSON).
fn opt(v: f32) -> Option<f32> {
    v.is_finite().then_some(v)
}

/// The value at quantile `q` of `(value, count)` pairs in ascending value order, the way
/// hdrhistogram's `value_at_quantile` ranks (at least the first observation).
fn quantile(buckets: &[(u64, u64)], total: u64, q: f64) -> Option<u64> {
    let rank = ((q * total as f64).ceil() as u64).max(1);
    let mut seen = 0;
    buckets
        .iter()
        .find(|(_, c)| {
            seen += c;
            seen >= rank
        })
        .map(|(v, _)| *v)
}

impl Track {
    fn new(window: &Window) -> Track {
        let mut track = Track {
            points: std::collections::VecDeque::with_capacity(POINTS),
            requests: 0,
            errors: 0,
            goals: [(0, 0.0); 3],
            business: None,
            latency: hdrhistogram::Histogram::new_from(&window.latency),
            at: std::time::Instant::now(),
        };
        // The first read only sets the baseline: what came before the console is not a second.
        let mut scratch = Vec::new();
        track.read(window, &mut scratch);
        track
    }

    /// Reads the lifetime window: brings the counts and the latency copy up to date and leaves
    /// the second's latency observations in `fresh` as ascending `(µs, count)`. Returns
    /// (requests, errors, per-metric (n, sum)) since the last read.
    fn read(&mut self, w: &Window, fresh: &mut Vec<(u64, u64)>) -> (u64, u64, [(u64, f64); 3]) {
        fresh.clear();
        for v in w.latency.iter_recorded() {
            let value = v.value_iterated_to();
            let (now, before) = (v.count_at_value(), self.latency.count_at(value));
            if now > before {
                fresh.push((value, now - before));
                let _ = self.latency.record_n(value, now - before);
            }
        }
        let goals = [&w.accuracy, &w.conversion, &w.reward].map(|g| (g.n, g.sum));
        let mut delta = [(0, 0.0); 3];
        for (i, (n, sum)) in goals.iter().enumerate() {
            delta[i] = (n.saturating_sub(self.goals[i].0), sum - self.goals[i].1);
        }
        let out = (w.requests.saturating_sub(self.requests), w.errors.saturating_sub(self.errors), delta);
        (self.requests, self.errors, self.goals) = (w.requests, w.errors, goals);
        out
    }

    fn push(&mut self, point: Point) {
        if self.points.len() == POINTS {
            self.points.pop_front();
        }
        self.points.push_back(point);
    }

    fn columns(&self, variant: &str) -> VariantSeries {
        let col = |f: fn(&Point) -> f32| self.points.iter().map(|p| opt(f(p))).collect::<Vec<_>>();
        VariantSeries {
            variant: variant.to_string(),
            t: self.points.iter().map(|p| p.t).collect(),
            requests_per_s: self.points.iter().map(|p| p.requests_per_s).collect(),
            error_rate: col(|p| p.error_rate),
            p50_ms: col(|p| p.p50_ms),
            p99_ms: col(|p| p.p99_ms),
            business_metric: self.business.map(|i| BUSINESS[i]),
            business: col(|p| p.business),
        }
    }
}

impl Series {
    fn tracks(&self) -> std::sync::MutexGuard<'_, HashMap<(String, String), Track>> {
        self.tracks.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Takes one point for every variant of `telemetry`, stamped `unix_s`.
    pub fn sample(&self, telemetry: &Telemetry, unix_s: u64) {
        let mut fresh = Vec::new();
        let mut tracks = self.tracks();
        for v in telemetry.variants() {
            let key = (v.route.clone(), v.variant.clone());
            let Some(track) = tracks.get_mut(&key) else {
                if tracks.len() < MAX_SERIES {
                    let track = v.with_total(Track::new);
                    tracks.insert(key, track);
                } else {
                    self.untracked.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
                continue;
            };
            let (requests, errors, goals) = v.with_total(|w| track.read(w, &mut fresh));
            let now = std::time::Instant::now();
            let secs = now.duration_since(track.at).as_secs_f64().max(0.001);
            track.at = now;
            let ok: u64 = fresh.iter().map(|(_, c)| c).sum();
            let ms = |q| quantile(&fresh, ok, q).map_or(f32::NAN, |us| us as f32 / 1000.0);
            if track.business.is_none() {
                track.business = goals.iter().position(|(n, _)| *n > 0);
            }
            let business = track.business.map_or(f32::NAN, |i| match goals[i] {
                (0, _) => f32::NAN,
                (n, sum) => (sum / n as f64) as f32,
            });
            track.push(Point {
                t: unix_s,
                requests_per_s: (requests as f64 / secs) as f32,
                error_rate: if requests > 0 { (errors as f64 / requests as f64) as f32 } else { f32::NAN },
                p50_ms: ms(0.5),
                p99_ms: ms(0.99),
                business,
            });
        }
    }

    /// Every track of `route` (all routes when `None`), sorted by route then variant.
    pub fn read(&self, route: Option<&str>) -> Vec<(String, VariantSeries)> {
        let tracks = self.tracks();
        let mut out: Vec<(String, VariantSeries)> = tracks
            .iter()
            .filter(|((r, _), _)| route.is_none_or(|want| r == want))
            .map(|((r, v), t)| (r.clone(), t.columns(v)))
            .collect();
        out.sort_by(|a, b| (&a.0, &a.1.variant).cmp(&(&b.0, &b.1.variant)));
        out
    }

    /// Variants not charted because the series were full.
    pub fn untracked(&self) -> u64 {
        self.untracked.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Samples `telemetry` once a second for as long as it lives.
    pub fn spawn(telemetry: &Arc<Telemetry>) {
        let me = Arc::downgrade(telemetry);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
            loop {
                tick.tick().await;
                let Some(t) = me.upgrade() else { return };
                let unix_s =
                    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
                t.series().sample(&t, unix_s);
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::telemetry::window::Unit;

    #[test]
    fn each_point_is_the_seconds_own_numbers() {
        let t = Telemetry::new();
        let v = t.variant("r", "a");
        for _ in 0..100 {
            v.record(200, Duration::from_millis(500), Unit::Request(1));
        }
        t.series().sample(&t, 1); // baseline: the old traffic is not a second
        for i in 0..100 {
            v.record(if i < 10 { 503 } else { 200 }, Duration::from_millis(2 + i % 2), Unit::Request(1));
        }
        v.feedback(&crate::telemetry::Feedback { conversion: Some(true), ..Default::default() }, Unit::Request(1));
        t.series().sample(&t, 2);
        t.series().sample(&t, 3);
        let all = t.series().read(None);
        assert_eq!(all.len(), 1);
        let s = &all[0].1;
        assert_eq!(s.t, [2, 3]);
        assert!(s.requests_per_s[0] > 0.0 && s.requests_per_s[1] == 0.0);
        assert!((s.error_rate[0].unwrap() - 0.1).abs() < 1e-6);
        assert_eq!(s.error_rate[1], None);
        let (p50, p99) = (s.p50_ms[0].unwrap(), s.p99_ms[0].unwrap());
        assert!((1.99..=2.01).contains(&p50) && (2.99..=3.01).contains(&p99), "{p50} {p99}: not the old 500 ms");
        assert_eq!(s.p99_ms[1], None);
        assert_eq!((s.business_metric, s.business[0]), (Some("conversion"), Some(1.0)));
    }

    #[test]
    fn tracks_and_points_are_bounded() {
        let t = Telemetry::new();
        for i in 0..MAX_SERIES + 5 {
            t.variant("r", &format!("v{i:03}")).record(200, Duration::from_millis(1), Unit::Request(1));
        }
        for s in 0..3 {
            t.series().sample(&t, s);
        }
        assert_eq!(t.series().read(Some("r")).len(), MAX_SERIES);
        assert!(t.series().untracked() > 0);
        assert!(t.series().read(Some("other")).is_empty());
        let one = Telemetry::new();
        one.variant("r", "a").record(200, Duration::from_millis(1), Unit::Request(1));
        for s in 0..(POINTS as u64 + 50) {
            one.series().sample(&one, s);
        }
        let all = one.series().read(None);
        assert_eq!((all[0].1.t.len(), all[0].1.t[0]), (POINTS, 50));
    }
}

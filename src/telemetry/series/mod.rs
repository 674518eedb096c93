//! Per route and variant, the last 15 minutes at 1 s resolution for the operator console:
//! requests/s, error rate, p50/p99 latency and the business metric of each second.
//!
//! A sampler task reads each variant's lifetime window once a second and stores the difference
//! from the last read, so the request path does no extra work. Memory is bounded whatever the
//! traffic: at most [`MAX_SERIES`] route × variant tracks of at most [`POINTS`] points each.
//!
//! In a fleet ([`Series::set_peers`]) each point is the fleet's: this replica's second plus
//! what the other replicas published of the same variant (see [`peers`]).
//!
//! Per-second latency quantiles: the lifetime window already keeps an HDR histogram of every
//! successful answer. Each track keeps one copy of it as of its last read (the same fixed-size
//! histogram, ~170 KB); a read walks the lifetime histogram once under the window's lock, takes
//! the buckets that grew (that second's observations, at the windows' 3-digit precision) and
//! brings the copy up to date. A second per-second histogram on the request path would cost
//! every request a record and the same memory again.

pub mod peers;

use super::window::Window;
use super::Telemetry;
pub use peers::{PeerWindow, Peers};
use serde::Serialize;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

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

/// What one source (this replica, or a share of another's publication) counted for a variant
/// during one sample; fractional because a peer's publication is spread over the time it covers.
#[derive(Debug, Default, Clone)]
struct Reading {
    requests: f64,
    errors: f64,
    /// Per business metric: (outcomes, sum of their values).
    goals: [(f64, f64); 3],
    /// Latency of successful answers: (µs, count).
    latency: Vec<(u64, f64)>,
}

impl Reading {
    fn add(&mut self, other: Reading) {
        self.requests += other.requests;
        self.errors += other.errors;
        for (a, b) in self.goals.iter_mut().zip(other.goals) {
            (a.0, a.1) = (a.0 + b.0, a.1 + b.1);
        }
        self.latency.extend(other.latency);
    }

    /// Takes the share `f` (0..=1) out of this reading.
    fn take(&mut self, f: f64) -> Reading {
        if f >= 1.0 {
            return std::mem::take(self);
        }
        let keep = 1.0 - f;
        let share = Reading {
            requests: self.requests * f,
            errors: self.errors * f,
            goals: self.goals.map(|(n, s)| (n * f, s * f)),
            latency: self.latency.iter().map(|(v, c)| (*v, c * f)).collect(),
        };
        self.requests *= keep;
        self.errors *= keep;
        self.goals = self.goals.map(|(n, s)| (n * keep, s * keep));
        self.latency.iter_mut().for_each(|(_, c)| *c *= keep);
        share
    }
}

/// A window's counts as of the last read, to take differences from.
#[derive(Debug)]
struct Baseline {
    requests: u64,
    errors: u64,
    goals: [(u64, f64); 3],
    latency: hdrhistogram::Histogram<u64>,
}

impl Baseline {
    /// A baseline at `w`'s counts now: what came before is not a second.
    fn new(w: &Window) -> Baseline {
        let mut b = Baseline {
            requests: 0,
            errors: 0,
            goals: [(0, 0.0); 3],
            latency: hdrhistogram::Histogram::new_from(&w.latency),
        };
        b.read(w);
        b
    }

    /// What `w` counted since the last read (all of it when `w` was emptied meanwhile: a peer's
    /// step window starts again at each analysis step).
    fn read(&mut self, w: &Window) -> Reading {
        let goals = [&w.accuracy, &w.conversion, &w.reward].map(|g| (g.n, g.sum));
        let shrank = w.requests < self.requests
            || w.errors < self.errors
            || w.latency.len() < self.latency.len()
            || goals.iter().zip(&self.goals).any(|(now, before)| now.0 < before.0);
        if shrank {
            self.restart();
        }
        let mut out = Reading::default();
        for v in w.latency.iter_recorded() {
            let value = v.value_iterated_to();
            let (now, before) = (v.count_at_value(), self.latency.count_at(value));
            if now > before {
                out.latency.push((value, (now - before) as f64));
                let _ = self.latency.record_n(value, now - before);
            }
        }
        for (i, (n, sum)) in goals.iter().enumerate() {
            out.goals[i] = ((n - self.goals[i].0) as f64, sum - self.goals[i].1);
        }
        out.requests = (w.requests - self.requests) as f64;
        out.errors = (w.errors - self.errors) as f64;
        (self.requests, self.errors, self.goals) = (w.requests, w.errors, goals);
        out
    }

    /// Back to zero: the next read takes the whole window.
    fn restart(&mut self) {
        (self.requests, self.errors, self.goals) = (0, 0, [(0, 0.0); 3]);
        self.latency.reset();
    }
}

/// One variant's track.
#[derive(Debug)]
struct Track {
    points: VecDeque<Point>,
    /// This replica's lifetime window as of the last read (`None` for a variant only peers
    /// have served).
    local: Option<Baseline>,
    /// The business metric charted: the first of [`BUSINESS`] that got samples.
    business: Option<usize>,
}

/// The value at quantile `q` of `(value, count)` pairs in ascending value order, the way
/// hdrhistogram's `value_at_quantile` ranks (at least the first observation).
fn quantile(buckets: &[(u64, f64)], total: f64, q: f64) -> Option<u64> {
    // A hair under the rank, so that counts spread in fractions still reach it.
    let rank = (q * total).max(f64::MIN_POSITIVE) * (1.0 - 1e-9);
    let mut seen = 0.0;
    buckets
        .iter()
        .find(|(_, c)| {
            seen += c;
            seen >= rank
        })
        .map(|(v, _)| *v)
}

impl Track {
    fn new(local: Option<Baseline>) -> Track {
        Track { points: VecDeque::with_capacity(POINTS), local, business: None }
    }

    /// The point of a sample that counted `r` over `secs` seconds.
    fn point(&mut self, t: u64, mut r: Reading, secs: f64) -> Point {
        r.latency.sort_unstable_by_key(|(v, _)| *v);
        let ok: f64 = r.latency.iter().map(|(_, c)| c).sum();
        let ms = |q| quantile(&r.latency, ok, q).map_or(f32::NAN, |us| us as f32 / 1000.0);
        if self.business.is_none() {
            self.business = r.goals.iter().position(|(n, _)| *n > 0.0);
        }
        let business = self.business.map_or(f32::NAN, |i| match r.goals[i] {
            (n, _) if n <= 0.0 => f32::NAN,
            (n, sum) => (sum / n) as f32,
        });
        let has = r.requests > 1e-9;
        Point {
            t,
            requests_per_s: (r.requests / secs) as f32,
            error_rate: if has { (r.errors / r.requests).min(1.0) as f32 } else { f32::NAN },
            p50_ms: if ok > 1e-9 { ms(0.5) } else { f32::NAN },
            p99_ms: if ok > 1e-9 { ms(0.99) } else { f32::NAN },
            business,
        }
    }

    fn push(&mut self, point: Point) {
        if self.points.len() == POINTS {
            self.points.pop_front();
        }
        self.points.push_back(point);
    }

    /// The points newer than `since` (unix seconds), as columns.
    fn columns(&self, variant: &str, since: u64) -> VariantSeries {
        let from = self.points.partition_point(|p| p.t <= since);
        let points = || self.points.range(from..);
        let col = |f: fn(&Point) -> f32| points().map(|p| opt(f(p))).collect::<Vec<_>>();
        VariantSeries {
            variant: variant.to_string(),
            t: points().map(|p| p.t).collect(),
            requests_per_s: points().map(|p| p.requests_per_s).collect(),
            error_rate: col(|p| p.error_rate),
            p50_ms: col(|p| p.p50_ms),
            p99_ms: col(|p| p.p99_ms),
            business_metric: self.business.map(|i| BUSINESS[i]),
            business: col(|p| p.business),
        }
    }
}

/// What the sampler keeps, behind one lock.
#[derive(Debug, Default)]
struct Inner {
    tracks: HashMap<(String, String), Track>,
    /// Other replicas' windows as last read, by (replica, route, variant).
    remotes: HashMap<(String, String, String), peers::Remote>,
    /// The newest point's time: points are stamped strictly later (a clock step back does not
    /// make two points of one second).
    newest: Option<u64>,
    /// When the last sample was taken.
    at: Option<Instant>,
    /// Per route, the replicas whose numbers its points hold (this one included).
    replicas: BTreeMap<String, usize>,
}

/// The per-second series of every route and variant.
#[derive(Debug, Default)]
pub struct Series {
    inner: Mutex<Inner>,
    /// Variants not charted because [`MAX_SERIES`] tracks exist.
    untracked: AtomicU64,
    /// Other replicas' windows, in a fleet.
    peers: OnceLock<Arc<dyn Peers>>,
    /// True once the sampler runs (the console is on).
    running: AtomicBool,
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

impl Series {
    fn inner(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// In a fleet: from now on each point adds what the other replicas published.
    pub fn set_peers(&self, peers: Arc<dyn Peers>) {
        let _ = self.peers.set(peers);
    }

    /// Replicas in the fleet (this one included) when in one.
    pub fn fleet_size(&self) -> Option<usize> {
        self.peers.get().map(|p| p.replicas())
    }

    /// Per route, how many replicas' numbers its latest points hold (this one included).
    pub fn replicas(&self, route: &str) -> usize {
        self.inner().replicas.get(route).copied().unwrap_or(1)
    }

    /// Takes one point for every variant of `telemetry`, stamped `unix_s`.
    pub fn sample(&self, telemetry: &Telemetry, unix_s: u64) {
        self.sample_at(telemetry, unix_s, Instant::now());
    }

    fn sample_at(&self, telemetry: &Telemetry, unix_s: u64, now: Instant) {
        let mut guard = self.inner();
        let inner = &mut *guard;
        let t = match inner.newest {
            Some(n) if unix_s <= n => n + 1,
            _ => unix_s,
        };
        let secs = inner.at.map_or(1.0, |at| now.saturating_duration_since(at).as_secs_f64().max(0.001));
        inner.at = Some(now);
        let mut readings: HashMap<(String, String), Reading> = HashMap::new();
        for v in telemetry.variants() {
            let key = (v.route.clone(), v.variant.clone());
            let room = inner.tracks.len() < MAX_SERIES;
            match inner.tracks.get_mut(&key) {
                Some(Track { local: Some(b), .. }) => {
                    readings.insert(key, v.with_total(|w| b.read(w)));
                }
                Some(track) => track.local = Some(v.with_total(Baseline::new)),
                None if room => {
                    inner.tracks.insert(key, Track::new(Some(v.with_total(Baseline::new))));
                }
                None => {
                    self.untracked.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        inner.replicas.clear();
        if let Some(p) = self.peers.get() {
            let mut from: BTreeMap<String, std::collections::BTreeSet<String>> = BTreeMap::new();
            for (replica, route, variant, reading, live) in peers::gather(&**p, &mut inner.remotes, secs, now) {
                if live {
                    from.entry(route.clone()).or_default().insert(replica);
                }
                let key = (route, variant);
                if !inner.tracks.contains_key(&key) {
                    if inner.tracks.len() >= MAX_SERIES {
                        self.untracked.fetch_add(1, Ordering::Relaxed);
                        continue;
                    }
                    inner.tracks.insert(key.clone(), Track::new(None));
                }
                readings.entry(key).or_default().add(reading);
            }
            inner.replicas = from.into_iter().map(|(route, set)| (route, set.len() + 1)).collect();
        }
        for (key, reading) in readings {
            if let Some(track) = inner.tracks.get_mut(&key) {
                let point = track.point(t, reading, secs);
                track.push(point);
                inner.newest = Some(t);
            }
        }
    }

    /// Every track of `route` (all routes when `None`), sorted by route then variant, with the
    /// points newer than `since` (unix seconds; all with 0). A track is listed even when it has
    /// no newer point, so a reader can tell a variant that is gone from one that is quiet.
    pub fn read(&self, route: Option<&str>, since: u64) -> Vec<(String, VariantSeries)> {
        let inner = self.inner();
        let mut out: Vec<(String, VariantSeries)> = inner
            .tracks
            .iter()
            .filter(|((r, _), _)| route.is_none_or(|want| r == want))
            .map(|((r, v), t)| (r.clone(), t.columns(v, since)))
            .collect();
        out.sort_by(|a, b| (&a.0, &a.1.variant).cmp(&(&b.0, &b.1.variant)));
        out
    }

    /// The newest point's time (unix seconds), if any: what a reader asks `since` next.
    pub fn newest(&self) -> Option<u64> {
        self.inner().newest
    }

    /// Variants not charted because the series were full.
    pub fn untracked(&self) -> u64 {
        self.untracked.load(Ordering::Relaxed)
    }

    /// Whether the sampler runs (the console is on: `server.console`, true unless set false).
    pub fn running(&self) -> bool {
        self.running.load(Ordering::Relaxed)
    }

    /// Samples `telemetry` once a second for as long as it lives.
    pub fn spawn(telemetry: &Arc<Telemetry>) {
        telemetry.series().running.store(true, Ordering::Relaxed);
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
    use crate::telemetry::window::{Unit, Window};

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
        let all = t.series().read(None, 0);
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
        assert_eq!(t.series().read(Some("r"), 0).len(), MAX_SERIES);
        assert!(t.series().untracked() > 0);
        assert!(t.series().read(Some("other"), 0).is_empty());
        let one = Telemetry::new();
        one.variant("r", "a").record(200, Duration::from_millis(1), Unit::Request(1));
        for s in 0..(POINTS as u64 + 50) {
            one.series().sample(&one, s);
        }
        let all = one.series().read(None, 0);
        assert_eq!((all[0].1.t.len(), all[0].1.t[0]), (POINTS, 50));
    }

    #[test]
    fn since_sends_only_newer_points_and_every_track() {
        let t = Telemetry::new();
        t.variant("r", "a").record(200, Duration::from_millis(1), Unit::Request(1));
        for s in 10..20 {
            t.series().sample(&t, s);
        }
        // A clock that steps back still stamps the next point later than the newest.
        t.series().sample(&t, 5);
        assert_eq!(t.series().newest(), Some(20));
        t.variant("r", "b").record(200, Duration::from_millis(1), Unit::Request(1));
        t.series().sample(&t, 21); // b's baseline: no point yet
        let all = t.series().read(None, 18);
        assert_eq!(all.len(), 2, "a track with no newer point is still listed");
        assert_eq!(all[0].1.t, [19, 20, 21]);
        assert_eq!(all[0].1.requests_per_s.len(), 3);
        assert!(all[1].1.t.is_empty());
        assert!(t.series().read(None, 21).iter().all(|(_, s)| s.t.is_empty()));
        assert_eq!(t.series().read(None, 0)[0].1.t.len(), 11);
    }

    /// Two peers' windows as a fleet would publish them.
    #[derive(Debug, Default)]
    struct FakeFleet(Mutex<Vec<(String, u64, u64, Window)>>);

    impl Peers for FakeFleet {
        fn visit(&self, f: &mut dyn FnMut(PeerWindow<'_>)) {
            for (replica, epoch, published_ms, window) in self.0.lock().unwrap().iter() {
                f(PeerWindow {
                    replica,
                    route: "r",
                    variant: "a",
                    revision: "rev",
                    epoch: *epoch,
                    published_ms: *published_ms,
                    window,
                });
            }
        }
        fn replicas(&self) -> usize {
            1 + self.0.lock().unwrap().len()
        }
    }

    #[test]
    fn in_a_fleet_each_second_adds_the_peers_publications_counting_each_request_once() {
        let t = Telemetry::new();
        let fleet = Arc::new(FakeFleet::default());
        t.series().set_peers(fleet.clone());
        let local = t.variant("r", "a");
        let mut peer = Window::default();
        let publish = |peer: &Window, epoch: u64, ms: u64| {
            *fleet.0.lock().unwrap() = vec![("b".to_string(), epoch, ms, peer.clone())];
        };
        let start = Instant::now();
        let at = |s: u64| start + Duration::from_secs(s);
        publish(&peer, 1, 0);
        t.series().sample_at(&t, 1, at(1)); // baselines
                                            // The peer publishes 40 requests every 2 s (4 of them 503s); this replica serves 10 a second.
        for s in 2..=9u64 {
            for _ in 0..10 {
                local.record(200, Duration::from_millis(1), Unit::Request(1));
            }
            if s % 2 == 0 {
                for i in 0..40 {
                    peer.record(Duration::from_millis(7), i < 4, Unit::Request(1));
                }
                publish(&peer, 1, s * 1000);
            }
            t.series().sample_at(&t, s, at(s));
        }
        // A new analysis step: the peer's window starts from zero, and only its new requests count.
        let mut fresh = Window::default();
        for _ in 0..6 {
            fresh.record(Duration::from_millis(7), false, Unit::Request(1));
        }
        publish(&fresh, 2, 10_000);
        t.series().sample_at(&t, 10, at(10));
        t.series().sample_at(&t, 11, at(11));
        let all = t.series().read(Some("r"), 0);
        let s = &all[0].1;
        let total: f32 = s.requests_per_s.iter().sum();
        assert_eq!(total, 80.0 + 4.0 * 40.0 + 6.0, "every request once: {:?}", s.requests_per_s);
        assert_eq!(s.t, (1..=11).collect::<Vec<u64>>());
        // Once the publication interval is known (from s = 4), each is spread over the 2 s it
        // covers: 10 + 40/2 a second, not 10 then 50.
        assert!(s.requests_per_s[3..9].iter().all(|r| (*r - 30.0).abs() < 1e-3), "{:?}", s.requests_per_s);
        assert!(s.error_rate[3..9].iter().all(|e| (e.unwrap() - 2.0 / 30.0).abs() < 1e-4), "{:?}", s.error_rate);
        let (p50, p99) = (s.p50_ms[3].unwrap(), s.p99_ms[3].unwrap());
        assert!((6.99..=7.01).contains(&p50) && (6.99..=7.01).contains(&p99), "{p50} {p99}");
        assert_eq!((t.series().replicas("r"), t.series().fleet_size()), (2, Some(2)));
        // The peer leaves: its windows go, and so does its track.
        fleet.0.lock().unwrap().clear();
        t.series().sample_at(&t, 12, at(12));
        assert_eq!(t.series().replicas("r"), 1);
    }
}

//! Telemetry: logs, Prometheus metrics, per-variant analysis windows, shadow agreement.

pub mod names;
pub mod series;
pub mod shadow;
pub mod window;

use metrics::{Counter, Gauge, Histogram, Key, KeyName, Label, Metadata, Recorder, SharedString};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle, PrometheusRecorder};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;
use tracing_subscriber::EnvFilter;
use window::{Unit, Window, WindowSnapshot};

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// Sends structured logs to stderr. The level comes from `RUST_LOG` (default `info`).
pub fn init_logging(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    use std::io::IsTerminal;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
}

static METADATA: Metadata<'static> = Metadata::new(module_path!(), metrics::Level::INFO, Some(module_path!()));

/// Business feedback for one request.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Feedback {
    /// Converted or not.
    pub conversion: Option<bool>,
    /// A reward value.
    pub reward: Option<f64>,
    /// Rows scored against true labels, and rows predicted right.
    pub labels: Option<(u64, u64)>,
}

/// One variant's windows: assigned traffic over its life and in the current analysis step, and
/// pinned traffic (version path, override header) in the current step, kept apart.
#[derive(Debug, Default)]
struct Windows {
    total: Window,
    step: Window,
    pinned: Window,
}

/// One variant's numbers: its windows and its metric handles.
#[derive(Debug)]
pub struct VariantStats {
    /// Route name.
    pub route: String,
    /// Variant name.
    pub variant: String,
    windows: Mutex<Windows>,
    by_code: Mutex<HashMap<(u16, bool), Counter>>,
    duration: Histogram,
    inference: Histogram,
    batch: Histogram,
    upstream: Histogram,
    telemetry: std::sync::Weak<Telemetry>,
}

impl VariantStats {
    fn windows(&self) -> std::sync::MutexGuard<'_, Windows> {
        self.windows.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// One answered request of `unit`; pinned requests go to the pinned window only.
    pub fn record(&self, code: u16, latency: Duration, unit: Unit) {
        let error = code >= 500;
        let pinned = unit == Unit::Pinned;
        {
            let mut w = self.windows();
            if pinned {
                w.pinned.record(latency, error, unit);
            } else {
                w.total.record(latency, error, unit);
                w.step.record(latency, error, unit);
            }
        }
        self.duration.record(latency.as_secs_f64());
        let counter = {
            let mut codes = self.by_code.lock().unwrap_or_else(|p| p.into_inner());
            codes
                .entry((code, pinned))
                .or_insert_with(|| match self.telemetry.upgrade() {
                    Some(t) => t.counter(
                        names::REQUESTS_TOTAL,
                        vec![
                            Label::new("route", self.route.clone()),
                            Label::new("variant", self.variant.clone()),
                            Label::new("code", code.to_string()),
                            Label::new("pinned", if pinned { "true" } else { "false" }),
                        ],
                    ),
                    None => Counter::noop(),
                })
                .clone()
        };
        counter.increment(1);
    }

    /// Time an in-process model took, and how many requests shared its run.
    pub fn inference(&self, d: Duration, batch: usize) {
        self.inference.record(d.as_secs_f64());
        self.batch.record(batch as f64);
    }

    /// Time an upstream took to its response head.
    pub fn upstream(&self, d: Duration) {
        self.upstream.record(d.as_secs_f64());
    }

    /// Business feedback on an answer given to `unit`; on a pinned answer it goes to the
    /// pinned window only.
    pub fn feedback(&self, fb: &Feedback, unit: Unit) {
        {
            let mut guard = self.windows();
            let Windows { total, step, pinned } = &mut *guard;
            let windows = if unit == Unit::Pinned { vec![pinned] } else { vec![total, step] };
            // A pinned answer's outcome is recorded under a stand-in unit in its own window.
            let unit = if unit == Unit::Pinned { Unit::Request(0) } else { unit };
            for w in windows {
                if let Some(c) = fb.conversion {
                    w.conversion.add(unit, f64::from(u8::from(c)));
                }
                if let Some(r) = fb.reward {
                    w.reward.add(unit, r);
                }
                if let Some((rows, right)) = fb.labels {
                    w.accuracy.add_proportion(unit, rows, right);
                }
            }
        }
        let Some(t) = self.telemetry.upgrade() else { return };
        let labels = |kind: &'static str| {
            let mut l = vec![Label::new("route", self.route.clone()), Label::new("variant", self.variant.clone())];
            if !kind.is_empty() {
                l.push(Label::new("kind", kind));
            }
            l
        };
        if let Some(c) = fb.conversion {
            t.counter(names::FEEDBACK_TOTAL, labels("conversion")).increment(1);
            t.counter(names::FEEDBACK_CONVERSIONS, labels("")).increment(u64::from(c));
        }
        if let Some(r) = fb.reward {
            t.counter(names::FEEDBACK_TOTAL, labels("reward")).increment(1);
            t.gauge(names::FEEDBACK_REWARD_SUM, labels("")).increment(r);
        }
        if let Some((rows, right)) = fb.labels {
            t.counter(names::FEEDBACK_TOTAL, labels("label")).increment(rows);
            t.counter(names::FEEDBACK_CORRECT, labels("")).increment(right);
        }
    }

    /// The lifetime numbers of assigned traffic.
    pub fn total(&self) -> WindowSnapshot {
        self.windows().total.snapshot()
    }

    /// Runs `f` on the lifetime window of assigned traffic (the console's sampler reads it).
    pub(crate) fn with_total<R>(&self, f: impl FnOnce(&Window) -> R) -> R {
        f(&self.windows().total)
    }

    /// The current analysis step's numbers (assigned traffic).
    pub fn step(&self) -> WindowSnapshot {
        self.windows().step.snapshot()
    }

    /// The current step's pinned traffic.
    pub fn pinned(&self) -> WindowSnapshot {
        self.windows().pinned.snapshot()
    }

    /// Answers since start, assigned and pinned: (successful count, their total time in ns,
    /// failed count, their total time in ns), for Triton's statistics extension. Times are HDR
    /// means × counts (3 significant digits).
    pub fn lifetime_counts(&self) -> (u64, u64, u64, u64) {
        let w = self.windows();
        let sum = |h: &hdrhistogram::Histogram<u64>| (h.len(), (h.mean() * h.len() as f64 * 1000.0) as u64);
        let (ok_a, ok_a_ns) = sum(&w.total.latency);
        let (ok_p, ok_p_ns) = sum(&w.pinned.latency);
        let (bad_a, bad_a_ns) = sum(&w.total.error_latency);
        let (bad_p, bad_p_ns) = sum(&w.pinned.error_latency);
        (ok_a + ok_p, ok_a_ns + ok_p_ns, bad_a + bad_p, bad_a_ns + bad_p_ns)
    }

    /// A copy of the current analysis step's window of assigned traffic, for judging.
    pub fn step_window(&self) -> Window {
        self.windows().step.clone()
    }

    /// A copy of the current step's pinned window (blue-green judges its preview on it).
    pub fn pinned_window(&self) -> Window {
        self.windows().pinned.clone()
    }

    /// Starts a new analysis step: empties the step's windows, assigned and pinned.
    pub fn reset_step(&self) {
        let mut w = self.windows();
        w.step.reset();
        w.pinned.reset();
    }
}

/// The gateway's metrics registry and per-variant windows. One per gateway, so that several
/// gateways in one process (tests) keep separate numbers.
pub struct Telemetry {
    recorder: PrometheusRecorder,
    handle: PrometheusHandle,
    variants: RwLock<HashMap<(String, String), Arc<VariantStats>>>,
    in_flight: Gauge,
    series: series::Series,
    me: std::sync::Weak<Telemetry>,
    /// Every variant's drift window (input quality), kept across routing tables.
    pub quality: crate::quality::Registry,
}

impl std::fmt::Debug for Telemetry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Telemetry").finish_non_exhaustive()
    }
}

impl Telemetry {
    /// A fresh registry with every metric described.
    pub fn new() -> Arc<Telemetry> {
        let recorder = PrometheusBuilder::new()
            .set_buckets(&names::DURATION_BUCKETS)
            .and_then(|b| {
                let sizes = metrics_exporter_prometheus::Matcher::Full(names::BATCH_SIZE.to_string());
                b.set_buckets_for_metric(sizes, &names::BATCH_BUCKETS)
            })
            .map(PrometheusBuilder::build_recorder)
            .unwrap_or_else(|_| PrometheusBuilder::new().build_recorder());
        for (name, kind, help) in names::ALL {
            let (key, help) = (KeyName::from(name), SharedString::from(help));
            match kind {
                names::Kind::Counter => recorder.describe_counter(key, None, help),
                names::Kind::Gauge => recorder.describe_gauge(key, None, help),
                names::Kind::Histogram => recorder.describe_histogram(key, Some(metrics::Unit::Seconds), help),
                names::Kind::Sizes => recorder.describe_histogram(key, None, help),
            }
        }
        let handle = recorder.handle();
        let in_flight = recorder.register_gauge(&Key::from_name(names::IN_FLIGHT), &METADATA);
        in_flight.set(0.0);
        Arc::new_cyclic(|me| Telemetry {
            recorder,
            handle,
            variants: RwLock::default(),
            in_flight,
            series: series::Series::default(),
            me: me.clone(),
            quality: Default::default(),
        })
    }

    /// A counter handle.
    pub fn counter(&self, name: &'static str, labels: Vec<Label>) -> Counter {
        self.recorder.register_counter(&Key::from_parts(name, labels), &METADATA)
    }

    /// A gauge handle.
    pub fn gauge(&self, name: &'static str, labels: Vec<Label>) -> Gauge {
        self.recorder.register_gauge(&Key::from_parts(name, labels), &METADATA)
    }

    fn histogram(&self, name: &'static str, route: &str, variant: &str) -> Histogram {
        let labels = vec![Label::new("route", route.to_string()), Label::new("variant", variant.to_string())];
        self.recorder.register_histogram(&Key::from_parts(name, labels), &METADATA)
    }

    /// The numbers of a route's variant, made on first use and kept for the gateway's life.
    pub fn variant(&self, route: &str, variant: &str) -> Arc<VariantStats> {
        let key = (route.to_string(), variant.to_string());
        if let Some(s) = self.variants.read().unwrap_or_else(|p| p.into_inner()).get(&key) {
            return s.clone();
        }
        let mut all = self.variants.write().unwrap_or_else(|p| p.into_inner());
        all.entry(key)
            .or_insert_with(|| {
                Arc::new(VariantStats {
                    route: route.to_string(),
                    variant: variant.to_string(),
                    windows: Mutex::default(),
                    by_code: Mutex::default(),
                    duration: self.histogram(names::REQUEST_DURATION, route, variant),
                    inference: self.histogram(names::INFERENCE_DURATION, route, variant),
                    batch: self.histogram(names::BATCH_SIZE, route, variant),
                    upstream: self.histogram(names::UPSTREAM_DURATION, route, variant),
                    telemetry: self.me.clone(),
                })
            })
            .clone()
    }

    /// Every variant seen, sorted by route then variant.
    pub fn variants(&self) -> Vec<Arc<VariantStats>> {
        let mut v: Vec<_> = self.variants.read().unwrap_or_else(|p| p.into_inner()).values().cloned().collect();
        v.sort_by(|a, b| (&a.route, &a.variant).cmp(&(&b.route, &b.variant)));
        v
    }

    /// The last 15 minutes of every variant, second by second (fed by [`Telemetry::spawn_series`]).
    pub fn series(&self) -> &series::Series {
        &self.series
    }

    /// Samples the per-second series once a second for as long as this telemetry lives.
    pub fn spawn_series(self: &Arc<Self>) {
        series::Series::spawn(self);
    }

    /// Counts a request in flight until the guard drops.
    pub fn in_flight(&self) -> InFlight {
        self.in_flight.increment(1.0);
        InFlight(self.in_flight.clone())
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        self.handle.render()
    }

    /// Folds the histogram observations recorded since the last upkeep (or scrape) into their
    /// buckets. The recorder queues every observation until then, so without upkeep a gateway
    /// nobody scrapes grows by a few bytes per request.
    pub fn upkeep(&self) {
        self.handle.run_upkeep();
    }

    /// Runs [`Telemetry::upkeep`] every `every` for as long as this telemetry lives.
    pub fn spawn_upkeep(self: &Arc<Self>, every: std::time::Duration) {
        let me = Arc::downgrade(self);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                let Some(t) = me.upgrade() else { return };
                t.upkeep();
            }
        });
    }
}

/// Decrements the in-flight gauge when dropped.
#[derive(Debug)]
pub struct InFlight(Gauge);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.decrement(1.0);
    }
}

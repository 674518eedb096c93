//! The upstream path's hand-written parts against tower's, per request:
//! - the retry budget: the previous hand-written window (atomics, reset every 10 s) against
//!   tower's `TpsBudget` (ten sliding 1 s slots behind a mutex), which modelgate now uses;
//! - endpoint balancing: modelgate's power-of-two-choices pick over atomic in-flight counts
//!   against tower's `balance::p2c::Balance` over three endpoints, shared between tasks the
//!   way tower services are, through a `Buffer` (a channel and a task).
//!
//! Run: `cargo bench --bench upstream` (figures in the README's benchmark section).

use criterion::{criterion_group, criterion_main, Criterion};
use modelgate::backend::UpstreamBackend;
use modelgate::config::{BackendKind, Config};
use std::convert::Infallible;
use std::hint::black_box;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tower::balance::p2c::Balance;
use tower::buffer::Buffer;
use tower::load::{CompleteOnResponse, PendingRequests};
use tower::retry::budget::{Budget, TpsBudget};
use tower::{Service, ServiceExt};

/// The retry budget modelgate carried before tower's: a share of the requests in a window
/// that restarts every 10 s, with a floor.
struct WindowBudget {
    born: Instant,
    window_start: AtomicU64,
    window_requests: AtomicU64,
    window_retries: AtomicU64,
}

impl Budget for WindowBudget {
    fn deposit(&self) {
        let now = self.born.elapsed().as_millis() as u64;
        let start = self.window_start.load(Ordering::Relaxed);
        if now.saturating_sub(start) > 10_000
            && self.window_start.compare_exchange(start, now, Ordering::Relaxed, Ordering::Relaxed).is_ok()
        {
            self.window_requests.store(0, Ordering::Relaxed);
            self.window_retries.store(0, Ordering::Relaxed);
        }
        self.window_requests.fetch_add(1, Ordering::Relaxed);
    }

    fn withdraw(&self) -> bool {
        let allowed = 100u64.max((0.2 * self.window_requests.load(Ordering::Relaxed) as f64) as u64);
        if self.window_retries.fetch_add(1, Ordering::Relaxed) < allowed {
            true
        } else {
            self.window_retries.fetch_sub(1, Ordering::Relaxed);
            false
        }
    }
}

fn budgets(c: &mut Criterion) {
    let window = WindowBudget {
        born: Instant::now(),
        window_start: AtomicU64::new(0),
        window_requests: AtomicU64::new(0),
        window_retries: AtomicU64::new(0),
    };
    let tps = TpsBudget::new(Duration::from_secs(10), 10, 0.2);
    per_request(c, "retry_budget/hand_written_window", &window);
    per_request(c, "retry_budget/tower_tps_budget", &tps);
}

/// Per request: one deposit; one in ten requests also asks for a retry.
fn per_request(c: &mut Criterion, name: &str, budget: &impl Budget) {
    let mut n = 0u32;
    c.bench_function(name, |b| {
        b.iter(|| {
            budget.deposit();
            n = n.wrapping_add(1);
            if n.is_multiple_of(10) {
                black_box(budget.withdraw());
            }
        })
    });
}

fn balancers(c: &mut Criterion) {
    let yaml = "backends:\n  - name: pool\n    upstream:\n      urls: [http://127.0.0.1:1, http://127.0.0.1:2, http://127.0.0.1:3]\n\
                routes:\n  - path_prefix: /p/\n    backend: pool\n";
    let config = Config::parse(yaml, Path::new("bench.yaml")).expect("valid");
    let BackendKind::Upstream(spec) = &config.backends[0].kind else { unreachable!() };
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    let up = rt.block_on(async { UpstreamBackend::new("pool", spec).expect("backend") });
    c.bench_function("p2c/modelgate_pick", |b| b.iter(|| black_box(up.pick(black_box(&[])))));
    // Three endpoints that answer at once, each weighed by its requests in flight.
    let endpoints: Vec<_> = (0..3)
        .map(|i| {
            PendingRequests::new(
                tower::service_fn(move |x: u64| async move { Ok::<u64, Infallible>(x + i) }),
                CompleteOnResponse::default(),
            )
        })
        .collect();
    let balanced = rt.block_on(async {
        let balance = Balance::new(tower::discover::ServiceList::new(endpoints));
        Buffer::new(balance, 1024)
    });
    c.bench_function("p2c/tower_balance_behind_buffer", |b| {
        b.iter_custom(|iters| {
            let mut service = balanced.clone();
            rt.block_on(async {
                let started = Instant::now();
                for i in 0..iters {
                    let ready = service.ready().await.expect("ready");
                    black_box(ready.call(i).await.expect("answer"));
                }
                started.elapsed()
            })
        })
    });
}

criterion_group!(benches, budgets, balancers);
criterion_main!(benches);

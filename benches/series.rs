//! What the console's sampler costs: one `Series::sample` (every variant's point of one second)
//! with realistic lifetime histograms, and the time it holds each variant's window lock.
//! Run: `cargo bench --bench series`.

use criterion::{criterion_group, criterion_main, Criterion};
use modelgate::telemetry::window::Unit;
use modelgate::telemetry::Telemetry;
use std::time::{Duration, Instant};

/// Latencies of a model server: mostly 0.3–3 ms, a tail to 200 ms.
fn latency(i: u64) -> Duration {
    let x = (i.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 40) % 10_000;
    let us = if x < 9_900 { 300 + x * 27 / 10 } else { 3_000 + (x - 9_900) * 1_970 };
    Duration::from_micros(us)
}

fn sampler(c: &mut Criterion) {
    for variants in [10usize, 100] {
        let t = Telemetry::new();
        let stats: Vec<_> = (0..variants).map(|i| t.variant(&format!("r{}", i / 2), &format!("v{i}"))).collect();
        for s in &stats {
            for i in 0..100_000 {
                s.record(if i % 100 == 0 { 503 } else { 200 }, latency(i), Unit::Request(i));
            }
        }
        let mut second = 0u64;
        t.series().sample(&t, second);
        c.bench_function(&format!("series sample, {variants} variants, 1000 requests each per second"), |b| {
            b.iter_custom(|iters| {
                let mut spent = Duration::ZERO;
                for _ in 0..iters {
                    for s in &stats {
                        for i in 0..1_000 {
                            s.record(200, latency(second * 1_000 + i), Unit::Request(i));
                        }
                    }
                    second += 1;
                    let start = Instant::now();
                    t.series().sample(&t, second);
                    spent += start.elapsed();
                }
                spent
            })
        });
    }
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(20).measurement_time(Duration::from_secs(5));
    targets = sampler
}
criterion_main!(benches);

//! Micro-benchmarks of the request path's routing work: variant assignment and table swaps.
//! Run: `cargo bench --bench routing` (figures in README's benchmark table).

use criterion::{criterion_group, criterion_main, Criterion};
use modelgate::backend::{Backend, UpstreamBackend};
use modelgate::config::{Config, RouteKind, Sticky};
use modelgate::routing::assign::{assign, bucket, sticky_key};
use modelgate::routing::{Role, Route, RouteTable, SharedTable, Variant};
use modelgate::telemetry::Telemetry;
use std::hint::black_box;
use std::path::Path;
use std::sync::Arc;

fn backend() -> Arc<Backend> {
    let config =
        Config::parse("backends:\n  - name: up\n    upstream: {url: \"http://127.0.0.1:9\"}\n", Path::new("b.yaml"))
            .expect("valid");
    let modelgate::config::BackendKind::Upstream(spec) = &config.backends[0].kind else { unreachable!() };
    Arc::new(Backend::Upstream(UpstreamBackend::new("up", spec).expect("plain http needs no CA")))
}

fn route(name: &str, telemetry: &Telemetry, backend: &Arc<Backend>) -> Route {
    let variant = |v: &str, role, weight, buckets| Variant {
        name: v.to_string(),
        role,
        backend: backend.clone(),
        weight,
        buckets,
        stats: telemetry.variant(name, v),
        fault: None,
        quality: None,
    };
    Route {
        name: name.to_string(),
        kind: RouteKind::Model { name: name.to_string(), upstream_model: None },
        strategy: "canary",
        salt: name.to_string(),
        variants: vec![variant("stable", Role::Stable, 90.0, 9000), variant("canary", Role::Canary, 10.0, 1000)],
        segments: vec![(9000, 0), (10_000, 1)],
        version: 1,
        sticky: Some(Sticky::Header("x-user-id".into())),
        shadow: None,
        unavailable: None,
        limit: None,
        shed: metrics::Counter::noop(),
        overrides: modelgate::config::OverridePolicy::Allow,
    }
}

fn bench(c: &mut Criterion) {
    let telemetry = Telemetry::new();
    let backend = backend();
    let r = route("risk", &telemetry, &backend);
    c.bench_function("assign/sticky_key", |b| {
        b.iter(|| assign(black_box(&r), None, None, Some(black_box("user-48213"))))
    });
    c.bench_function("assign/weighted_draw", |b| b.iter(|| assign(black_box(&r), None, None, None)));
    c.bench_function("assign/override_header", |b| {
        b.iter(|| assign(black_box(&r), None, Some(black_box("canary")), None))
    });
    c.bench_function("assign/bucket_hash", |b| b.iter(|| bucket(black_box("risk"), black_box("user-48213"))));
    let mut headers = http::HeaderMap::new();
    headers.insert("x-user-id", http::HeaderValue::from_static("user-48213"));
    let sticky = Sticky::Header("x-user-id".into());
    c.bench_function("assign/read_sticky_header", |b| {
        b.iter(|| sticky_key(black_box(&sticky), black_box(&headers), None))
    });

    let table =
        SharedTable::new(RouteTable::new(1, (0..8).map(|i| route(&format!("r{i}"), &telemetry, &backend)).collect()));
    c.bench_function("table/load", |b| b.iter(|| black_box(table.load()).generation()));
    let mut generation = 1;
    c.bench_function("table/build_and_swap_8_routes", |b| {
        b.iter(|| {
            generation += 1;
            let routes = (0..8).map(|i| route(&format!("r{i}"), &telemetry, &backend)).collect();
            table.store(RouteTable::new(generation, routes));
        })
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);

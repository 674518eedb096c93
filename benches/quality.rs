//! Micro-benchmark of the request path's data-quality work: one request's rows checked against
//! the breast-cancer profile (30 features) and added to the drift window.
//! Run: `cargo bench --bench quality` (figures in README's data-quality section).

use criterion::{criterion_group, criterion_main, Criterion};
use modelgate::config::{BackendKind, Config};
use modelgate::protocol::{Tensor, TensorData};
use modelgate::quality::{Registry, VariantQuality};
use std::hint::black_box;
use std::path::PathBuf;

fn quality(validation: bool, drift: bool) -> VariantQuality {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let mut yaml = String::from(
        "backends:\n  - name: bc\n    onnx: {path: models/breast-cancer-v1.onnx, profile: models/breast-cancer.profile.json}\n\
         routes:\n  - model: bc\n    backend: bc\n",
    );
    if validation {
        yaml += "    validation: {on_invalid: count}\n";
    }
    if drift {
        yaml += "    drift: {window: 10m, min_samples: 500}\n";
    }
    let config = Config::parse(&yaml, &root.join("bench.yaml")).expect("valid");
    let BackendKind::Onnx(onnx) = &config.backends[0].kind else { unreachable!() };
    let profile = onnx.profile.clone().expect("a profile");
    let registry = Registry::default();
    VariantQuality::new(&config.routes[0], "bc", Some(&profile), &["input"], &registry, None, |_| {
        metrics::Counter::noop()
    })
    .expect("checks")
}

fn rows(n: usize) -> Vec<Tensor> {
    let profile = quality(true, false).profile.expect("a profile");
    let data = (0..n * 30).map(|i| profile.features[i % 30].mean as f32).collect();
    vec![Tensor { name: "input".into(), shape: vec![n, 30], data: TensorData::Fp32(data) }]
}

fn bench(c: &mut Criterion) {
    for n in [1, 64] {
        let inputs = rows(n);
        for (name, v, d) in [("validate", true, false), ("drift", false, true), ("both", true, true)] {
            let q = quality(v, d);
            c.bench_function(&format!("quality/{name}/{n}_rows"), |b| {
                b.iter(|| black_box(q.observe(black_box(&inputs))).is_ok())
            });
        }
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);

//! Micro-benchmark of reading an OIP JSON inference request: the body parsed and its inputs
//! decoded against the breast-cancer signature (30 FP32 features), at 1 and 32 rows, flat and
//! nested data. Run: `cargo bench --bench oip`.

use criterion::{criterion_group, criterion_main, Criterion};
use modelgate::protocol::oip::InferRequest;
use modelgate::protocol::{DataType, Signature, TensorSpec};
use std::hint::black_box;

fn body(rows: usize, nested: bool) -> Vec<u8> {
    let holdout: serde_json::Value =
        serde_json::from_str(include_str!("../models/breast-cancer-holdout.json")).expect("holdout JSON");
    let samples = holdout["samples"].as_array().expect("samples");
    let rows: Vec<Vec<f64>> = (0..rows)
        .map(|i| {
            samples[i % samples.len()]["features"].as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect()
        })
        .collect();
    let data = if nested { serde_json::json!(rows) } else { serde_json::json!(rows.concat()) };
    // Fields in the order clients write them (json! would sort `data` before `datatype`).
    format!(r#"{{"inputs":[{{"name":"input","shape":[{},30],"datatype":"FP32","data":{data}}}]}}"#, rows.len())
        .into_bytes()
}

fn bench(c: &mut Criterion) {
    let sig = Signature {
        inputs: vec![TensorSpec { name: "input".into(), datatype: DataType::Fp32, shape: vec![-1, 30] }],
        outputs: vec![],
    };
    for (rows, nested) in [(1, false), (32, false), (32, true)] {
        let body = body(rows, nested);
        let name = format!("oip_decode/{rows}_rows{}", if nested { "_nested" } else { "" });
        c.bench_function(&name, |b| {
            b.iter(|| {
                let mut request = InferRequest::from_json(black_box(&body)).expect("valid");
                black_box(request.decode_inputs(&sig).expect("fits"))
            })
        });
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);

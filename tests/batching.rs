//! Dynamic batching (`onnx.batching`): concurrent requests of one in-process model share ONNX
//! Runtime runs, and every request gets exactly its own rows back. Real sockets, real ONNX
//! Runtime, the shipped MLP (models/mlp-batching.onnx), answers compared with the unbatched
//! route and with Python onnxruntime's recorded outputs.

mod support;

use serde_json::{json, Value};
use support::*;

fn routes() -> String {
    let mlp = model("mlp-batching.onnx");
    format!(
        r#"
backends:
  - name: batched
    onnx: {{path: "{mlp}", sessions: 1, batching: {{max_batch_size: 64, max_queue_delay: 50ms}}}}
  - name: single
    onnx: {{path: "{mlp}", sessions: 1}}
  - name: pair
    onnx: {{path: "{mlp}", sessions: 2, batching: {{max_batch_size: 64, max_queue_delay: 1s}}}}
routes:
  - model: pair
    backend: pair
  - model: batched
    backend: batched
  - model: single
    backend: single
"#
    )
}

fn scores(answer: &Value) -> Vec<f64> {
    answer["outputs"][0]["data"].as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect()
}

fn close(a: &[f64], b: &[f64]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| (x - y).abs() <= 1e-4 * y.abs().max(1.0))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_requests_share_runs_and_each_gets_its_own_rows() {
    let gw = Gateway::start(&routes()).await;
    let recorded = &expected_outputs()["models"]["mlp-batching"];
    let x: Vec<f64> = recorded["inputs"]["x"]["data"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect();
    let want: Vec<f64> =
        recorded["outputs"]["scores"]["data"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect();
    let width = 256;
    // 24 requests at once: one, two or three rows each, from the recorded input.
    let requests: Vec<(usize, usize)> = (0..24).map(|i| (i % 3, 1 + i % 3)).collect();
    let calls: Vec<_> = requests
        .iter()
        .map(|&(start, rows)| {
            let rows = rows.min(3 - start);
            let body = json!({"inputs": [{"name": "x", "datatype": "FP32", "shape": [rows, width],
                                          "data": x[start * width..(start + rows) * width]}]});
            let url = gw.url("/v2/models/batched/infer");
            tokio::spawn(async move { (post_json(&url, &body).await, body, start, rows) })
        })
        .collect();
    for call in calls {
        let (answer, body, start, rows) = call.await.unwrap();
        assert_eq!(answer.status, 200, "{}", answer.error());
        let answer = answer.json();
        assert_eq!(answer["outputs"][0]["shape"], json!([rows, 16]));
        let expected = &want[start * 16..(start + rows) * 16];
        assert!(
            close(&scores(&answer), expected),
            "rows {start}..{}: {:?} vs {expected:?}",
            start + rows,
            scores(&answer)
        );
        // The same request unbatched answers the same.
        let single = post_json(&gw.url("/v2/models/single/infer"), &body).await.json();
        assert!(close(&scores(&single), &scores(&answer)));
    }
    // Runs were shared: more requests than runs, and the histogram says so.
    let metrics = String::from_utf8_lossy(&get(&gw.admin_url("/metrics")).await.body).to_string();
    let value = |name: &str| -> f64 {
        metrics
            .lines()
            .find(|l| l.starts_with(name) && l.contains(r#"route="batched""#))
            .and_then(|l| l.rsplit(' ').next()?.parse().ok())
            .unwrap_or_else(|| panic!("no {name} in {metrics}"))
    };
    let (sum, count) = (value("modelgate_batch_requests_sum"), value("modelgate_batch_requests_count"));
    assert_eq!(count, 24.0, "one observation per request");
    assert!(sum > count, "some requests shared a run: sum {sum} over {count} requests\n{metrics}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_two_sessions_no_request_waits_out_the_queue_delay() {
    // Two sessions, a delay of 1 s: a free session takes what is queued and runs it; no batch
    // sits out the delay waiting for requests that the other session would take. (The unit test
    // `with_other_sessions_a_batch_takes_what_is_queued_and_goes` pins the rule itself; here,
    // with a debug-built server, requests rarely overlap enough at the model to show it.)
    let gw = Gateway::start(&routes()).await;
    let x = vec![0.5f64; 256];
    let body = json!({"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 256], "data": x}]});
    assert_eq!(post_json(&gw.url("/v2/models/pair/infer"), &body).await.status, 200);
    for _ in 0..3 {
        let calls: Vec<_> = (0..16)
            .map(|_| {
                let (url, body) = (gw.url("/v2/models/pair/infer"), body.clone());
                tokio::spawn(async move { post_json(&url, &body).await.status })
            })
            .collect();
        // A bound on waiting, not a measurement: well under the 1 s delay, far above a run.
        let all = tokio::time::timeout(std::time::Duration::from_millis(800), async {
            let mut statuses = Vec::new();
            for call in calls {
                statuses.push(call.await.unwrap());
            }
            statuses
        });
        let statuses = all.await.expect("a batch waited out max_queue_delay with another session free");
        assert!(statuses.iter().all(|&s| s == 200), "{statuses:?}");
    }
}

#[tokio::test]
async fn batching_needs_a_batch_dimension_and_sane_limits() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("routes.yaml");
    std::fs::write(
        &file,
        format!(
            "backends:\n  - name: m\n    onnx: {{path: \"{}\", batching: {{max_batch_size: 0, max_queue_delay: 5s}}}}\n",
            model("mlp-batching.onnx")
        ),
    )
    .unwrap();
    let e = modelgate::config::Config::load(&file).unwrap_err().to_string();
    assert!(e.contains("backends[0].onnx.batching.max_batch_size: must be between 1 and 65536, got 0"), "{e}");
    assert!(e.contains("backends[0].onnx.batching.max_queue_delay: must be at most 1s"), "{e}");
}

//! The labelled-data capture on a stalled disk: the writer is stuck, the answers are not. Every
//! file the writer may open is a FIFO nobody reads, so opening it for writing blocks in the
//! kernel exactly as a write to a hung disk or network filesystem does. Real sockets, real ONNX
//! Runtime.

mod support;

use http::StatusCode;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use support::*;

fn metric(text: &str, name: &str) -> f64 {
    text.lines().find(|l| l.starts_with(name)).and_then(|l| l.rsplit(' ').next()?.parse().ok()).unwrap_or(0.0)
}

fn p99(mut times: Vec<Duration>) -> Duration {
    times.sort();
    times[times.len() * 99 / 100]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_capture_disk_drops_and_counts_lines_and_every_answer_goes_on() {
    let gw = Gateway::start(&format!(
        "backends:\n  - name: m\n    onnx: {{path: \"{}\"}}\nroutes:\n  - model: bc\n    backend: m\n    capture: {{dir: captures, sample_percent: 100, queue: 8}}\n  - model: plain\n    backend: m\n",
        model("breast-cancer-v1.onnx")
    ))
    .await;
    let dir = gw.dir.path().join("captures");
    // The capture files are named `<route>-<unix ms>.jsonl` when opened: for the next two
    // minutes, each such name is already a FIFO.
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() as u64;
    let names: Vec<_> = (now..now + 120_000).map(|t| dir.join(format!("bc-{t}.jsonl"))).collect();
    for chunk in names.chunks(4000) {
        let made = std::process::Command::new("mkfifo").args(chunk).status().expect("mkfifo");
        assert!(made.success());
    }
    let body = body();
    let run = |route: &'static str| {
        let (url, body) = (gw.url(&format!("/v2/models/{route}/infer")), body.clone());
        async move {
            let mut times = Vec::new();
            for _ in 0..300 {
                let started = Instant::now();
                let a = post_json(&url, &body).await;
                assert_eq!(a.status, StatusCode::OK, "{route}: {:?}", a.body);
                times.push(started.elapsed());
            }
            times
        }
    };
    let plain = run("plain").await;
    // A bound, not a measure: every answer of the captured route comes back while its writer
    // is stuck (a request path that waited for the writer would never answer).
    let stalled = tokio::time::timeout(Duration::from_secs(60), run("bc")).await.expect("answers despite the stall");
    let metrics = String::from_utf8_lossy(&get(&gw.admin_url("/metrics")).await.body).to_string();
    let dropped = metric(&metrics, "modelgate_capture_lines_total{route=\"bc\",outcome=\"dropped\"}");
    let written = metric(&metrics, "modelgate_capture_lines_total{route=\"bc\",outcome=\"written\"}");
    assert_eq!(written, 0.0, "nothing reached the stalled file");
    // The writer holds one line (stuck opening the file) and the queue eight; the rest are
    // dropped and counted.
    assert!(dropped >= 300.0 - 9.0, "dropped {dropped} of 300");
    println!(
        "stalled capture: {dropped} of 300 lines dropped and counted; p99 {:?} with the stalled capture, {:?} on the same model without capture",
        p99(stalled),
        p99(plain)
    );
    // The writer thread stays blocked in open(2) until the test process ends; unblocking it
    // here would need a reader on a FIFO whose name only the writer knows.
}

//! The leader judges the sum of every replica's windows; feedback counts once fleet-wide.

use super::*;

/// Two replicas `a` and `b` under `prefix` with a canary held at 50% (only windows a plan judges
/// are published; the analysis never decides), once its step has started on both (with the
/// leader's first analysis: count from there on); and which of the two leads.
async fn held_pair(etcd: &Etcd, prefix: &str) -> (Replica, Replica, usize) {
    let fixed = "  - model: risk\n    strategy:\n      canary:\n        stable: stable\n        canary: good\n        steps: [{weight: 50, pause: until_promoted}]\n        analysis: {interval: 100ms, min_samples: 100000000}\n";
    let a = Replica::start(&routes(&etcd.url, prefix, "a", fixed)).await;
    let b = Replica::start(&routes(&etcd.url, prefix, "b", fixed)).await;
    let (l, _) = leader_of(&[&a, &b]).await;
    eventually("the step started on both replicas", Duration::from_secs(10), || async {
        [&a, &b].iter().all(|r| r.status("risk").progress.is_some()).then_some(())
    })
    .await;
    (a, b, l)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_leader_judges_the_sum_of_every_replicas_windows_feedback_included() {
    let etcd = Etcd::start().await;
    let (a, b, l) = held_pair(&etcd, "/t/merge").await;
    let both = [&a, &b];
    let leader = both[l];
    for (replica, n) in [(&a, 30), (&b, 20)] {
        for _ in 0..n {
            let r = post_json(&replica.gw.url("/v2/models/risk/infer"), &body()).await;
            assert_eq!(r.status, StatusCode::OK);
        }
    }
    let rev = leader.revision("risk");
    let merged = eventually("both replicas' windows at the leader", Duration::from_secs(10), || async {
        let epoch = epoch(&leader.status("risk"));
        let (mut requests, mut units) = (0, 0);
        for variant in ["stable", "good"] {
            let local = leader.controller().telemetry().variant("risk", variant).step_window();
            let w = leader.cluster.fleet().window("risk", &rev, epoch, variant, false, local);
            requests += w.requests;
            units += w.snapshot().units;
        }
        (requests == 50).then_some(units)
    })
    .await;
    assert_eq!(merged, 50, "every request without a sticky key is its own unit");

    // Feedback counts wherever it lands: an answer of replica a, its outcome posted to b.
    let answer = post_json(&a.gw.url("/v2/models/risk/infer"), &body()).await;
    let variant = answer.headers["x-modelgate-variant"].to_str().unwrap().to_string();
    let id = answer.headers["x-modelgate-request-id"].to_str().unwrap().to_string();
    let posted = post_json(&b.gw.url("/v2/feedback"), &json!({"request_id": id, "conversion": true})).await;
    assert!(posted.status.is_success(), "{:?}", posted.body);
    eventually("the feedback in the leader's window", Duration::from_secs(10), || async {
        let epoch = epoch(&leader.status("risk"));
        let local = leader.controller().telemetry().variant("risk", &variant).step_window();
        let w = leader.cluster.fleet().window("risk", &rev, epoch, &variant, false, local);
        (w.conversion.n == 1 && w.conversion.sum == 1.0).then_some(())
    })
    .await;
    let view = leader.cluster.fleet().view();
    let replicas = view["replicas"].as_array().unwrap();
    assert_eq!(replicas.len(), 2, "{view}");
    assert!(replicas.iter().all(|r| r["last_publish_ms"].is_u64()), "{view}");
}

/// Conversions counted in `replica`'s own step windows of route risk, both variants.
fn own_conversions(replica: &Replica) -> u64 {
    let t = replica.controller().telemetry();
    ["stable", "good"].iter().map(|v| t.variant("risk", v).step_window().conversion.n).sum()
}

/// Conversions in the fleet's merged windows of route risk as `leader` judges them.
fn fleet_conversions(leader: &Replica) -> u64 {
    let (rev, epoch) = (leader.revision("risk"), epoch(&leader.status("risk")));
    ["stable", "good"]
        .iter()
        .map(|v| {
            let local = leader.controller().telemetry().variant("risk", v).step_window();
            leader.cluster.fleet().window("risk", &rev, epoch, v, false, local).conversion.n
        })
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn feedback_posted_to_two_replicas_counts_once_fleet_wide_and_waits_for_etcd() {
    let mut etcd = Etcd::start().await;
    let (a, b, l) = held_pair(&etcd, "/t/feedback").await;
    let both = [&a, &b];
    let leader = both[l];
    let answer_id = |r: &Replica| {
        let url = r.gw.url("/v2/models/risk/infer");
        async move {
            let answer = post_json(&url, &body()).await;
            assert_eq!(answer.status, StatusCode::OK);
            answer.headers["x-modelgate-request-id"].to_str().unwrap().to_string()
        }
    };
    let converted = |id: &str| json!({"request_id": id, "conversion": true});

    // One answer's outcome posted to a, then replayed to b and to a: counted once.
    let first = answer_id(&a).await;
    let posted = post_json(&a.gw.url("/v2/feedback"), &converted(&first)).await;
    assert_eq!(posted.status, StatusCode::OK, "{:?}", posted.body);
    let replayed = post_json(&b.gw.url("/v2/feedback"), &converted(&first)).await;
    assert_eq!(replayed.status, StatusCode::CONFLICT, "{:?}", replayed.body);
    assert!(replayed.error().contains("already recorded"), "{}", replayed.error());
    let again = post_json(&a.gw.url("/v2/feedback"), &converted(&first)).await;
    assert_eq!(again.status, StatusCode::CONFLICT, "{:?}", again.body);
    // Another kind of outcome on the same answer, and another answer's, still count.
    let reward = post_json(&b.gw.url("/v2/feedback"), &json!({"request_id": first, "reward": 2.0})).await;
    assert_eq!(reward.status, StatusCode::OK, "{:?}", reward.body);
    let second = answer_id(&b).await;
    let posted = post_json(&b.gw.url("/v2/feedback"), &converted(&second)).await;
    assert_eq!(posted.status, StatusCode::OK, "{:?}", posted.body);
    assert_eq!((own_conversions(&a), own_conversions(&b)), (1, 1), "each replica counted one conversion");
    eventually("both conversions in the leader's merged windows", Duration::from_secs(10), || async {
        (fleet_conversions(leader) == 2).then_some(())
    })
    .await;
    let mut client = etcd.client().await;
    let claims = client.get("/t/feedback/feedback/", Some(GetOptions::new().with_prefix())).await.unwrap();
    assert_eq!(claims.kvs().len(), 3, "one claim per answer and kind: two conversions, one reward");
    assert!(claims.kvs().iter().all(|kv| kv.lease() != 0), "claims expire with their lease");

    // etcd unreachable: feedback is refused (503, retry), not counted; the retry counts once.
    let third = answer_id(&a).await;
    etcd.stop();
    let refused = post_json(&a.gw.url("/v2/feedback"), &converted(&third)).await;
    assert_eq!(refused.status, StatusCode::SERVICE_UNAVAILABLE, "{:?}", refused.body);
    assert!(refused.error().contains("fleet-wide") && refused.error().contains("retry"), "{}", refused.error());
    assert_eq!(own_conversions(&a), 1, "nothing counted while etcd was unreachable");
    etcd.restart().await;
    eventually("the retried feedback to count", Duration::from_secs(20), || async {
        let retried = post_json(&b.gw.url("/v2/feedback"), &converted(&third)).await;
        match retried.status {
            StatusCode::OK => Some(()),
            StatusCode::SERVICE_UNAVAILABLE => None,
            other => panic!("the retry answered {other}: {:?}", retried.body),
        }
    })
    .await;
    let replayed = post_json(&a.gw.url("/v2/feedback"), &converted(&third)).await;
    assert_eq!(replayed.status, StatusCode::CONFLICT, "{:?}", replayed.body);
    assert_eq!((own_conversions(&a), own_conversions(&b)), (1, 2));
    eventually("three conversions in the leader's merged windows", Duration::from_secs(10), || async {
        (fleet_conversions(leader) == 3).then_some(())
    })
    .await;
}

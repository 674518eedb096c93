//! Fleet mode against a real etcd (Debian's etcd-server; `make test` installs it): leader
//! election and fencing, statuses applied on every replica, windows merged across replicas,
//! admin changes on a follower taking effect fleet-wide. Each test starts its own etcd on free
//! loopback ports with a temporary data folder, and kills it at the end.

mod support;
// Windows and feedback merged across replicas, in tests/cluster/windows.rs (one test binary).
#[path = "cluster/windows.rs"]
mod windows;

use etcd_client::GetOptions;
use http::StatusCode;
use modelgate::cluster::Cluster;
use modelgate::config::Config;
use modelgate::rollout::fleet::{epoch, Fleet, FleetError};
use modelgate::rollout::Controller;
use serde_json::json;
use std::sync::Arc;
use std::time::Duration;
use support::etcd::{eventually, free_port, Etcd};
use support::*;

fn routes(etcd: &str, prefix: &str, replica: &str, canary: &str) -> String {
    format!(
        r#"cluster:
  etcd: {{endpoints: ["{url}"], prefix: "{prefix}"}}
  replica_id: {replica}
  lease_ttl: 2s
  publish_interval: 100ms
backends:
  - name: stable
    onnx: {{path: "{v1}"}}
  - name: good
    onnx: {{path: "{v2}"}}
  - name: faulty
    onnx: {{path: "{v2}"}}
    fault: {{error_percent: 100}}
routes:
{canary}"#,
        url = etcd,
        v1 = model("breast-cancer-v1.onnx"),
        v2 = model("breast-cancer-v2.onnx"),
    )
}

/// A canary held at each step until promoted (analysis on, but it can only hold or roll back).
const STEPPED: &str = r#"  - model: risk
    strategy:
      canary:
        stable: stable
        canary: good
        steps:
          - {weight: 10, pause: until_promoted}
          - {weight: 40, pause: until_promoted}
        analysis: {interval: 100ms, min_samples: 1000000, max_error_rate: 0.5}
"#;

/// A replica: a gateway in this process that joined the fleet.
struct Replica {
    gw: Gateway,
    cluster: Cluster,
}

impl Replica {
    async fn start(yaml: &str) -> Replica {
        let gw = Gateway::start(yaml).await;
        let config = Config::load(&gw.routes_file()).unwrap();
        let cluster = Cluster::join(config.cluster.clone().unwrap(), &gw.controller).await.unwrap();
        // As `modelgate serve` does: feedback is claimed through the fleet.
        gw.state.claim_feedback_through(cluster.fleet());
        Replica { gw, cluster }
    }

    fn controller(&self) -> &Arc<Controller> {
        &self.gw.controller
    }

    fn revision(&self, route: &str) -> String {
        self.controller().revisions().iter().find(|(r, _)| r == route).unwrap().1.clone()
    }

    fn status(&self, route: &str) -> modelgate::rollout::RouteStatus {
        self.controller().statuses().iter().find(|(r, _)| r == route).unwrap().1.clone()
    }

    /// The canary's weight in the published table.
    fn canary_weight(&self, route: &str) -> f64 {
        let table = self.controller().table().load();
        let r = table.routes().iter().find(|r| r.name == route).unwrap();
        r.variants.iter().find(|v| v.name != "stable").map_or(0.0, |v| v.weight)
    }
}

/// Waits until exactly one of the replicas may decide; returns (leader, follower) indices.
async fn leader_of(replicas: &[&Replica]) -> (usize, usize) {
    eventually("a leader", Duration::from_secs(20), || async {
        let deciding: Vec<usize> =
            (0..replicas.len()).filter(|i| replicas[*i].cluster.fleet().may_decide().is_ok()).collect();
        (deciding.len() == 1).then(|| (deciding[0], 1 - deciding[0]))
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_leader_is_elected_and_a_deposed_leaders_write_is_fenced() {
    let etcd = Etcd::start().await;
    let a = Replica::start(&routes(&etcd.url, "/t/fence", "a", STEPPED)).await;
    let b = Replica::start(&routes(&etcd.url, "/t/fence", "b", STEPPED)).await;
    let both = [&a, &b];
    let (l, f) = leader_of(&both).await;
    let (leader, follower) = (both[l], both[f]);
    let rev = leader.revision("risk");
    let status = leader.status("risk");
    let why = follower.cluster.fleet().may_decide().unwrap_err();
    assert!(why.contains("not the leader"), "{why}");
    let refused = follower.cluster.fleet().write("risk", &rev, &status, true, None, None).await;
    assert!(matches!(refused, Err(FleetError::NotLeader(_))), "a follower cannot decide: {refused:?}");

    // Depose the leader behind its back: its lease is revoked in etcd, as if it had lapsed.
    let mut etcd_client = etcd.client().await;
    let keys = etcd_client.get("/t/fence/leader/", Some(GetOptions::new().with_prefix())).await.unwrap();
    let lease = keys.kvs().iter().min_by_key(|kv| kv.create_revision()).unwrap().lease();
    etcd_client.lease_revoke(lease).await.unwrap();
    let before = etcd_client.get(format!("/t/fence/status/risk/{rev}"), None).await.unwrap();
    let mut changed = status.clone();
    changed.last_analysis = Some("written by a deposed leader".into());
    let refused = leader.cluster.fleet().write("risk", &rev, &changed, true, None, None).await;
    assert!(matches!(refused, Err(FleetError::NotLeader(_))), "a deposed leader's write is fenced: {refused:?}");
    let after = etcd_client.get(format!("/t/fence/status/risk/{rev}"), None).await.unwrap();
    assert_eq!(
        before.kvs().first().map(|kv| kv.mod_revision()),
        after.kvs().first().map(|kv| kv.mod_revision()),
        "the fenced write changed nothing"
    );

    // The other replica takes over, and its decisions are written.
    eventually("the follower to take over", Duration::from_secs(20), || async {
        follower.cluster.fleet().may_decide().is_ok().then_some(())
    })
    .await;
    let mut taken = follower.status("risk");
    taken.last_analysis = Some("written by the new leader".into());
    // Its own analysis writes too: retry on a stale compare-and-swap until the write is ours.
    eventually("the new leader's write", Duration::from_secs(10), || {
        let (fleet, taken, rev) = (follower.cluster.fleet(), taken.clone(), rev.clone());
        async move {
            let mut mine = follower.status("risk");
            mine.last_analysis = taken.last_analysis.clone();
            fleet.write("risk", &rev, &mine, true, None, None).await.ok()
        }
    })
    .await;
    let view = follower.cluster.fleet().view();
    assert_eq!(view["is_leader"], true, "{view}");
    assert_eq!(view["leader"], follower.cluster.replica_id(), "{view}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_admin_promote_on_a_follower_takes_effect_on_the_leader_and_a_stale_if_match_is_412() {
    let etcd = Etcd::start().await;
    let a = Replica::start(&routes(&etcd.url, "/t/admin", "a", STEPPED)).await;
    let b = Replica::start(&routes(&etcd.url, "/t/admin", "b", STEPPED)).await;
    let both = [&a, &b];
    let (l, f) = leader_of(&both).await;
    let (leader, follower) = (both[l], both[f]);
    assert_eq!((leader.canary_weight("risk"), follower.canary_weight("risk")), (10.0, 10.0));
    // The fleet's ETag, read on the leader: etcd revisions, the same on every replica.
    let read = get(&leader.gw.admin_url("/admin/routes")).await;
    let old = read.headers["etag"].to_str().unwrap().to_string();

    let promoted = follower.gw.admin_post("/admin/routes/risk/promote", "").await;
    assert_eq!(promoted.status, StatusCode::OK, "{}", promoted.error());
    assert_eq!(follower.canary_weight("risk"), 40.0, "the follower applied its own change");
    eventually("the leader to apply the follower's promote", Duration::from_secs(10), || async {
        // The table is published a moment before the status readers see.
        let step = leader.status("risk").progress.map(|p| p.step);
        (leader.canary_weight("risk") == 40.0 && step == Some(1)).then_some(())
    })
    .await;

    // An If-Match read before the promote is stale on every replica.
    let auth = format!("Bearer {ADMIN_TOKEN}");
    for r in both {
        let stale = send(
            http::Method::POST,
            &r.gw.admin_url("/admin/routes/risk/rollback"),
            "",
            &[("authorization", &auth), ("if-match", &old)],
        )
        .await;
        assert_eq!(stale.status, StatusCode::PRECONDITION_FAILED, "{}", stale.error());
    }
    assert_eq!(leader.canary_weight("risk"), 40.0);
    // A fresh one read on the leader holds on the follower (the analysis' bookkeeping since
    // does not make it stale).
    let view = get(&leader.gw.admin_url("/admin/routes")).await.json();
    let fresh = view["routes"][0]["etag"].as_u64().unwrap();
    let paused = send(
        http::Method::POST,
        &follower.gw.admin_url("/admin/routes/risk/pause"),
        "",
        &[("authorization", &auth), ("if-match", &format!("\"{fresh}\""))],
    )
    .await;
    assert_eq!(paused.status, StatusCode::OK, "{}", paused.error());
    let cluster = eventually("both replicas in the follower's cluster view", Duration::from_secs(10), || async {
        let view = get(&follower.gw.admin_url("/admin/cluster")).await.json();
        let published = view["replicas"]
            .as_array()
            .is_some_and(|r| r.len() == 2 && r.iter().all(|r| r["last_publish_ms"].is_u64()));
        (published && view["leader"].is_string()).then_some(view)
    })
    .await;
    assert_eq!(cluster["leader"], leader.cluster.replica_id(), "{cluster}");
    // A replica that joins now serves the fleet's status from its first request.
    let c = Replica::start(&routes(&etcd.url, "/t/admin", "c", STEPPED)).await;
    assert_eq!(c.canary_weight("risk"), 40.0);
    assert_eq!(cluster["is_leader"], false, "{cluster}");
    assert_eq!(cluster["mixed_revisions"], false, "{cluster}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_canary_is_rolled_back_once_and_every_replica_routes_nothing_to_it() {
    let etcd = Etcd::start().await;
    let failing = r#"  - model: risk
    strategy:
      canary:
        stable: stable
        canary: faulty
        steps:
          - {weight: 50, pause: 1h}
        analysis: {interval: 100ms, min_samples: 20, max_error_rate: 0.02, failure_limit: 2}
"#;
    let a = Replica::start(&routes(&etcd.url, "/t/rollback", "a", failing)).await;
    let b = Replica::start(&routes(&etcd.url, "/t/rollback", "b", failing)).await;
    let both = [&a, &b];
    leader_of(&both).await;
    eventually("the rollback on both replicas", Duration::from_secs(30), || async {
        for r in both {
            for _ in 0..10 {
                post_json(&r.gw.url("/v2/models/risk/infer"), &body()).await;
            }
        }
        both.iter().all(|r| r.canary_weight("risk") == 0.0).then_some(())
    })
    .await;
    let rolled: usize = both
        .iter()
        .map(|r| r.controller().events(0, Some("risk")).iter().filter(|e| e.kind == "rolled_back").count())
        .sum();
    assert_eq!(rolled, 1, "one decision fleet-wide");
    for r in both {
        assert_eq!(r.status("risk").phase, modelgate::rollout::Phase::RolledBack);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_etcd_outage_keeps_serving_decides_nothing_and_resumes_at_the_same_step() {
    let mut etcd = Etcd::start().await;
    let a = Replica::start(&routes(&etcd.url, "/t/outage", "a", STEPPED)).await;
    let b = Replica::start(&routes(&etcd.url, "/t/outage", "b", STEPPED)).await;
    let both = [&a, &b];
    let (l, _) = leader_of(&both).await;
    let promoted = both[l].gw.admin_post("/admin/routes/risk/promote", "").await;
    assert_eq!(promoted.status, StatusCode::OK, "{}", promoted.error());
    eventually("step 1 on both replicas", Duration::from_secs(10), || async {
        both.iter().all(|r| r.canary_weight("risk") == 40.0).then_some(())
    })
    .await;
    let started = a.status("risk").progress.unwrap().step_started_ms;

    etcd.stop();
    eventually("both replicas to hold their decisions", Duration::from_secs(20), || async {
        both.iter()
            .all(|r| r.controller().decisions_held().is_some_and(|why| why.contains("etcd unreachable")))
            .then_some(())
    })
    .await;
    for r in both {
        for _ in 0..5 {
            let answer = post_json(&r.gw.url("/v2/models/risk/infer"), &body()).await;
            assert_eq!(answer.status, StatusCode::OK, "serving goes on without etcd");
        }
        let refused = r.gw.admin_post("/admin/routes/risk/promote", "").await;
        assert_eq!(refused.status, StatusCode::SERVICE_UNAVAILABLE, "{}", refused.error());
        assert_eq!(r.canary_weight("risk"), 40.0, "the last table stays");
        let status = get(&r.gw.admin_url("/admin/status")).await.json();
        assert!(status["decisions_held"].as_str().is_some_and(|w| w.contains("etcd")), "{status}");
    }

    etcd.restart().await;
    leader_of(&both).await;
    for r in both {
        let progress = r.status("risk").progress.unwrap();
        assert_eq!((progress.step, progress.step_started_ms), (1, started), "the step and its clock are kept");
        assert_eq!(r.canary_weight("risk"), 40.0);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_that_reloads_onto_a_newer_revision_takes_that_revisions_status_and_mixed_revisions_show() {
    let etcd = Etcd::start().await;
    let a = Replica::start(&routes(&etcd.url, "/t/revisions", "a", STEPPED)).await;
    let b = Replica::start(&routes(&etcd.url, "/t/revisions", "b", STEPPED)).await;
    let both = [&a, &b];
    leader_of(&both).await;
    let old = a.revision("risk");
    let client = etcd.client().await;
    eventually("the leader's status of the first revision", Duration::from_secs(10), || {
        let (mut client, key) = (client.clone(), format!("/t/revisions/status/risk/{old}"));
        async move { client.get(key, None).await.ok().filter(|r| r.kvs().len() == 1).map(|_| ()) }
    })
    .await;
    // A new revision of the route (sticky users) reaches replica a first, as a ConfigMap does.
    let sticky = STEPPED.replace("        canary: good\n", "        canary: good\n        sticky: {header: x-user}\n");
    let next = routes(&etcd.url, "/t/revisions", "a", &sticky);
    std::fs::write(a.gw.routes_file(), &next).unwrap();
    a.controller().reload_file().await.unwrap();
    let new = a.revision("risk");
    assert_ne!(old, new);
    let promoted = a.gw.admin_post("/admin/routes/risk/promote", "").await;
    assert_eq!(promoted.status, StatusCode::OK, "{}", promoted.error());
    assert_eq!(a.canary_weight("risk"), 40.0);
    let view = eventually("replica b's record in a's view", Duration::from_secs(10), || async {
        let view = a.cluster.fleet().view();
        (view["replicas"].as_array().map(Vec::len) == Some(2)).then_some(view)
    })
    .await;
    assert_eq!(view["mixed_revisions"], true, "{view}");
    assert_eq!(b.canary_weight("risk"), 10.0, "b runs the old revision and keeps its status");

    std::fs::write(b.gw.routes_file(), next.replace("replica_id: a", "replica_id: b")).unwrap();
    b.controller().reload_file().await.unwrap();
    assert_eq!(b.revision("risk"), new);
    eventually("b to take the new revision's status", Duration::from_secs(10), || async {
        (b.canary_weight("risk") == 40.0).then_some(())
    })
    .await;
    // Nobody runs the old revision now: the leader deletes its status after a grace.
    eventually("the old revision's status deleted", Duration::from_secs(30), || {
        let (mut client, key) = (client.clone(), format!("/t/revisions/status/risk/{old}"));
        async move { client.get(key, None).await.ok().filter(|r| r.kvs().is_empty()).map(|_| ()) }
    })
    .await;
    let kept = client.clone().get(format!("/t/revisions/status/risk/{new}"), None).await.unwrap();
    assert_eq!(kept.kvs().len(), 1, "the running revision's status stays");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_that_dies_without_a_word_is_replaced_and_the_step_goes_on() {
    let etcd = Etcd::start().await;
    let a = Replica::start(&routes(&etcd.url, "/t/failover", "a", STEPPED)).await;
    let b = Replica::start(&routes(&etcd.url, "/t/failover", "b", STEPPED)).await;
    let (l, _) = leader_of(&[&a, &b]).await;
    let (leader, follower) = if l == 0 { (a, b) } else { (b, a) };
    let promoted = leader.gw.admin_post("/admin/routes/risk/promote", "").await;
    assert_eq!(promoted.status, StatusCode::OK, "{}", promoted.error());
    let started = leader.status("risk").progress.unwrap().step_started_ms;
    eventually("the follower at step 1", Duration::from_secs(10), || async {
        (follower.status("risk").progress.map(|p| p.step_started_ms) == Some(started)).then_some(())
    })
    .await;
    // As SIGKILL would: its tasks stop and its lease is not revoked; it lapses after its TTL.
    drop(leader);
    eventually("the follower to take over", Duration::from_secs(20), || async {
        follower.cluster.fleet().may_decide().is_ok().then_some(())
    })
    .await;
    let progress = follower.status("risk").progress.unwrap();
    assert_eq!((progress.step, progress.step_started_ms), (1, started), "the step continues, not from its start");
    assert_eq!(follower.canary_weight("risk"), 40.0);
    let promoted = follower.gw.admin_post("/admin/routes/risk/promote", "").await;
    assert_eq!(promoted.status, StatusCode::OK, "{}", promoted.error());
    assert_eq!(follower.canary_weight("risk"), 100.0, "the new leader's replica takes changes");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_writes_wait_off_the_controllers_lock_and_only_a_newer_fleet_status_applies() {
    let etcd = Etcd::start().await;
    let a = Replica::start(&routes(&etcd.url, "/t/lock", "a", STEPPED)).await;
    let b = Replica::start(&routes(&etcd.url, "/t/lock", "b", STEPPED)).await;
    let both = [&a, &b];
    let (l, f) = leader_of(&both).await;
    let (leader, follower) = (both[l], both[f]);
    let rev = leader.revision("risk");
    let key = format!("/t/lock/status/risk/{rev}");
    let client = etcd.client().await;
    let (old, old_at) = eventually("the first step's status in etcd", Duration::from_secs(10), || {
        let (mut client, key) = (client.clone(), key.clone());
        async move {
            let kv = client.get(key, None).await.ok()?.kvs().first()?.clone();
            let stored: serde_json::Value = serde_json::from_slice(kv.value()).ok()?;
            let status: modelgate::rollout::RouteStatus = serde_json::from_value(stored["status"].clone()).ok()?;
            Some((status, kv.mod_revision()))
        }
    })
    .await;
    let promoted = follower.gw.admin_post("/admin/routes/risk/promote", "").await;
    assert_eq!(promoted.status, StatusCode::OK, "{}", promoted.error());
    eventually("step 1 on both replicas", Duration::from_secs(10), || async {
        both.iter().all(|r| r.canary_weight("risk") == 40.0).then_some(())
    })
    .await;

    // The revision check: a status older than the one applied is not applied again, and a
    // change made on an older status is refused by the store.
    for r in both {
        let applied = r.controller().apply_fleet_status("risk", &rev, old.clone(), old_at).await;
        assert_eq!(applied, Ok(false), "an older fleet status is ignored");
        assert_eq!(r.canary_weight("risk"), 40.0);
    }
    let stale = leader.cluster.fleet().write("risk", &rev, &old, false, None, Some(old_at)).await;
    assert!(matches!(stale, Err(FleetError::Stale(_))), "a change on an old base is refused: {stale:?}");

    // etcd hangs: an admin change waits for it, but not under the controller's lock — a reload
    // (which takes the lock) completes while the change is still waiting.
    follower.controller().reload_file().await.unwrap(); // warm: the one below is quick
    etcd.pause();
    let url = follower.gw.admin_url("/admin/routes/risk/promote");
    let change = tokio::spawn(async move {
        send(http::Method::POST, &url, "", &[("authorization", &format!("Bearer {ADMIN_TOKEN}"))]).await
    });
    // Give the change a moment to reach its etcd write (nothing to wait on from outside; were
    // the reload first, this check would only be weaker, never wrong).
    tokio::time::sleep(Duration::from_millis(300)).await;
    follower.controller().reload_file().await.unwrap();
    if change.is_finished() {
        let early = change.await.unwrap();
        panic!("the change was answered before etcd came back: {} {:?}", early.status, early.body);
    }
    etcd.resume();
    let answer = change.await.unwrap();
    // etcd answered before the change's request timed out (3 s): it went through. (Under the
    // lock, the reload would have waited for that timeout, and the change failed with 503.)
    assert_eq!(answer.status, StatusCode::OK, "{:?}", answer.body);
    assert_eq!(follower.canary_weight("risk"), 100.0, "promoted past the last step");
    // The fleet goes on: one leader, and its statuses apply everywhere.
    leader_of(&both).await;
    let weights = eventually("the same weight on both replicas", Duration::from_secs(10), || async {
        let w = (a.canary_weight("risk"), b.canary_weight("risk"));
        (w.0 == w.1).then_some(w)
    })
    .await;
    assert_eq!(weights, (100.0, 100.0));
}

#[test]
fn the_kubernetes_configmap_holds_a_valid_fleet_routes_file() {
    let manifest = std::fs::read_to_string(root().join("deploy/kubernetes/configmap.yaml")).unwrap();
    let doc: serde_yaml_ng::Value = serde_yaml_ng::from_str(&manifest).unwrap();
    let routes = doc["data"]["routes.yaml"].as_str().expect("data.routes.yaml");
    // The image's model folder is this checkout's models/.
    let routes = routes.replace("/opt/modelgate/models", &root().join("models").display().to_string());
    let config =
        Config::parse(&routes, &root().join("deploy/kubernetes/routes.yaml")).unwrap_or_else(|e| panic!("{e}"));
    let cluster = config.cluster.expect("a cluster: section");
    assert_eq!(cluster.replica_id, None, "the replica id comes from the pod name (MODELGATE_REPLICA_ID)");
    let deployment = std::fs::read_to_string(root().join("deploy/kubernetes/deployment.yaml")).unwrap();
    assert!(deployment.contains(modelgate::config::REPLICA_ID_ENV));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_starts_and_serves_while_etcd_is_unreachable() {
    // An endpoint where nothing listens (etcd down when the replica starts).
    let nowhere = format!("http://127.0.0.1:{}", free_port());
    let r = Replica::start(&routes(&nowhere, "/t/nowhere", "lonely", STEPPED)).await;
    let answer = post_json(&r.gw.url("/v2/models/risk/infer"), &body()).await;
    assert_eq!(answer.status, StatusCode::OK, "serving does not wait for etcd");
    let why = r.cluster.fleet().may_decide().unwrap_err();
    assert!(why.contains("etcd"), "{why}");
    let refused = r.gw.admin_post("/admin/routes/risk/promote", "").await;
    assert_eq!(refused.status, StatusCode::SERVICE_UNAVAILABLE, "{}", refused.error());
}

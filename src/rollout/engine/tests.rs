use super::*;
use crate::rollout::analysis::tests::{criteria, window};
use rand::rngs::StdRng;
use rand::SeedableRng;

fn plan() -> CanaryPlan {
    CanaryPlan {
        steps: vec![
            Step { weight: 10.0, pause: Some(Duration::from_secs(60)) },
            Step { weight: 30.0, pause: Some(Duration::from_secs(60)) },
            Step { weight: 60.0, pause: Some(Duration::from_secs(60)) },
        ],
        criteria: criteria(),
        interval: Duration::from_secs(10),
        failure_limit: 2,
        inconclusive_deadline: Duration::from_secs(120),
        on_inconclusive: OnInconclusive::Hold,
        checks: Vec::new(),
    }
}

/// Drives the engine every second from t=0 with windows made by `windows(step)`, until a
/// decision other than Advance or Nothing, or `limit` seconds; returns the decisions made.
fn run(plan: &CanaryPlan, limit: u64, mut windows: impl FnMut(usize) -> (Window, Window)) -> Vec<(u64, Decision)> {
    let mut p = Progress::default();
    let mut out = Vec::new();
    let (mut stable, mut canary) = windows(0);
    for t in 0..limit {
        let d = tick(plan, &mut p, t * 1000, &stable, &canary);
        if d != Decision::Nothing {
            out.push((t, d.clone()));
        }
        match d {
            Decision::Advance(step) => (stable, canary) = windows(step),
            Decision::Promote | Decision::Rollback(_) => break,
            Decision::Nothing => {}
        }
    }
    out
}

#[test]
fn a_good_canary_is_promoted_through_all_steps() {
    let mut rng = StdRng::seed_from_u64(11);
    let decisions = run(&plan(), 1000, |_| (window(&mut rng, 2000, 0.001, 10.0), window(&mut rng, 500, 0.001, 10.0)));
    let kinds: Vec<&Decision> = decisions.iter().map(|(_, d)| d).collect();
    assert_eq!(kinds, [&Decision::Advance(1), &Decision::Advance(2), &Decision::Promote]);
    // Each step is held for its pause: 60 s each.
    assert_eq!(decisions.iter().map(|(t, _)| *t).collect::<Vec<_>>(), [60, 120, 180]);
}

#[test]
fn five_percent_errors_roll_back_at_the_first_analysis() {
    let mut rng = StdRng::seed_from_u64(12);
    let mut bad = |_| (window(&mut rng, 2000, 0.001, 10.0), window(&mut rng, 500, 0.05, 10.0));
    // failure_limit 1: the first analysis (one interval in) rolls back.
    let once = CanaryPlan { failure_limit: 1, ..plan() };
    let decisions = run(&once, 1000, &mut bad);
    let (t, Decision::Rollback(why)) = &decisions[0] else { panic!("{decisions:?}") };
    assert!(why.contains("canary error rate"), "{why}");
    assert_eq!(*t, 10);
    // failure_limit 2: the second analysis, one interval later.
    let decisions = run(&plan(), 1000, &mut bad);
    assert!(matches!(decisions[0], (20, Decision::Rollback(_))), "{decisions:?}");
}

#[test]
fn twice_stables_p99_rolls_back() {
    let mut rng = StdRng::seed_from_u64(13);
    let decisions = run(&plan(), 1000, |_| (window(&mut rng, 2000, 0.0, 10.0), window(&mut rng, 500, 0.0, 20.0)));
    let Decision::Rollback(why) = &decisions[0].1 else { panic!("{decisions:?}") };
    assert!(why.contains("p99"), "{why}");
}

#[test]
fn too_little_traffic_is_held_not_rolled_back() {
    let mut rng = StdRng::seed_from_u64(14);
    let stable = window(&mut rng, 2000, 0.0, 10.0);
    let thin = window(&mut rng, 20, 0.5, 50.0); // terrible, but only 20 samples
    let decisions = run(&plan(), 3600, |_| (stable.clone(), thin.clone()));
    assert!(decisions.is_empty(), "held for an hour without a decision: {decisions:?}");
    // With on_inconclusive: rollback, the deadline ends the hold.
    let strict = CanaryPlan { on_inconclusive: OnInconclusive::Rollback, ..plan() };
    let decisions = run(&strict, 3600, |_| (stable.clone(), thin.clone()));
    let (t, Decision::Rollback(why)) = &decisions[0] else { panic!("{decisions:?}") };
    assert!(why.contains("still inconclusive"), "{why}");
    assert_eq!(*t, 180, "pause 60 s + deadline 120 s");
}

#[test]
fn a_paused_rollout_does_nothing() {
    let mut rng = StdRng::seed_from_u64(15);
    let (s, c) = (window(&mut rng, 2000, 0.0, 10.0), window(&mut rng, 500, 0.5, 10.0));
    let mut p = Progress { paused: true, ..Progress::default() };
    for t in 0..100 {
        assert_eq!(tick(&plan(), &mut p, t * 1000, &s, &c), Decision::Nothing);
    }
}

#[test]
fn alpha_is_spent_over_the_rollouts_looks() {
    let plan = plan();
    assert_eq!(planned_looks(&plan), 18, "3 steps of 60 s every 10 s");
    let alpha = plan.criteria.alpha;
    assert!((look_alpha(&plan, 1) - alpha / 36.0).abs() < 1e-15);
    assert!((look_alpha(&plan, 18) - alpha / 36.0).abs() < 1e-15);
    assert!(look_alpha(&plan, 19) < look_alpha(&plan, 18));
    // However long a step is held, the levels of all looks add up to at most alpha.
    let spent: f64 = (1..1_000_000).map(|k| look_alpha(&plan, k)).sum();
    assert!(spent <= alpha && spent > 0.99 * alpha, "{spent}");
    let held = CanaryPlan { steps: vec![Step { weight: 5.0, pause: None }], ..plan };
    assert_eq!(planned_looks(&held), UNTIL_PROMOTED_LOOKS);
}

#[test]
fn progress_saved_before_looks_were_counted_still_loads() {
    let old = r#"{"step":1,"step_started_ms":5,"last_analysis_ms":7,"failures":0,"paused":false,"last_verdict":null}"#;
    let p: Progress = serde_json::from_str(old).unwrap();
    assert_eq!((p.step, p.looks), (1, 0));
}

#[test]
fn prometheus_checks_fail_an_analysis_but_no_data_only_holds_it() {
    let (pass, fail, wait) = (Verdict::Pass, Verdict::Fail("c".into()), Verdict::Inconclusive("c".into()));
    let w = |v: &Verdict| v.clone();
    assert_eq!(with_checks(w(&pass), &pass), pass);
    assert_eq!(with_checks(w(&pass), &fail), fail);
    assert_eq!(with_checks(w(&pass), &wait), wait);
    assert_eq!(with_checks(Verdict::Fail("w".into()), &wait), Verdict::Fail("w".into()));
    assert_eq!(with_checks(Verdict::Inconclusive("w".into()), &pass), Verdict::Inconclusive("w".into()));
    assert_eq!(with_checks(Verdict::Inconclusive("w".into()), &fail), fail);
}

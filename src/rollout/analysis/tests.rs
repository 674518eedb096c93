use super::*;
use crate::telemetry::window::{Goal, Unit};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::time::Duration;

/// `n` 0/1 outcomes of which `k` are 1, each from its own unit.
pub(crate) fn proportion(n: u64, k: u64) -> Goal {
    let mut g = Goal::default();
    for i in 0..n {
        g.add(Unit::Request(i), f64::from(u8::from(i < k)));
    }
    g
}

/// A window of `n` requests with `err` errors and latencies around `ms` (±20%).
pub(crate) fn window(rng: &mut StdRng, n: u64, err: f64, ms: f64) -> Window {
    let mut w = Window::default();
    for _ in 0..n {
        let latency = ms * rng.random_range(0.8..1.2);
        w.record(Duration::from_secs_f64(latency / 1000.0), rng.random_bool(err), Unit::Request(rng.random()));
    }
    w
}

pub(crate) fn criteria() -> CanaryCriteria {
    CanaryCriteria {
        min_samples: 200,
        max_error_rate: Some(0.01),
        max_error_rate_increase: Some(0.005),
        max_p99_ratio: Some(1.5),
        business: None,
        alpha: 0.01,
    }
}

#[test]
fn a_good_canary_passes() {
    let mut rng = StdRng::seed_from_u64(1);
    let (s, c) = (window(&mut rng, 2000, 0.001, 10.0), window(&mut rng, 500, 0.001, 10.0));
    assert_eq!(judge_canary(&s, &c, &criteria()), Verdict::Pass);
}

#[test]
fn five_percent_errors_fail() {
    let mut rng = StdRng::seed_from_u64(2);
    let (s, c) = (window(&mut rng, 2000, 0.001, 10.0), window(&mut rng, 500, 0.05, 10.0));
    let Verdict::Fail(why) = judge_canary(&s, &c, &criteria()) else { panic!() };
    assert!(why.starts_with("canary error rate"), "{why}");
}

#[test]
fn twice_the_p99_fails_with_a_significant_shift() {
    let mut rng = StdRng::seed_from_u64(3);
    let (s, c) = (window(&mut rng, 2000, 0.0, 10.0), window(&mut rng, 500, 0.0, 20.0));
    let Verdict::Fail(why) = judge_canary(&s, &c, &criteria()) else { panic!() };
    assert!(why.contains("2.00x stable") || why.contains("x stable's"), "{why}");
    assert!(why.contains("Mann-Whitney"), "{why}");
}

#[test]
fn too_little_traffic_is_inconclusive_never_fail() {
    let mut rng = StdRng::seed_from_u64(4);
    let (s, c) = (window(&mut rng, 2000, 0.0, 10.0), window(&mut rng, 50, 0.5, 50.0));
    assert_eq!(judge_canary(&s, &c, &criteria()), Verdict::Inconclusive("canary has 50 of 200 samples".into()));
}

#[test]
fn mann_whitney_sees_shifts_and_not_noise() {
    let mut rng = StdRng::seed_from_u64(5);
    let a = window(&mut rng, 1000, 0.0, 10.0);
    let b = window(&mut rng, 1000, 0.0, 10.0);
    let c = window(&mut rng, 1000, 0.0, 11.0);
    assert!(mann_whitney_greater(&a.latency, &b.latency).unwrap() > 0.01);
    assert!(mann_whitney_greater(&a.latency, &c.latency).unwrap() < 1e-6);
    assert!(mann_whitney_greater(&c.latency, &a.latency).unwrap() > 0.99);
}

#[test]
fn the_business_guard_fails_a_worse_canary_and_holds_without_samples() {
    let mut c = criteria();
    c.business = Some(BusinessGuard { metric: Metric::Conversion, margin: 0.01, min_samples: 500 });
    let mut rng = StdRng::seed_from_u64(6);
    let mut s = window(&mut rng, 3000, 0.0, 10.0);
    let mut k = window(&mut rng, 3000, 0.0, 10.0);
    s.conversion = proportion(3000, 600); // 20%
    k.conversion = proportion(3000, 450); // 15%
    assert!(matches!(judge_canary(&s, &k, &c), Verdict::Fail(_)));
    k.conversion = proportion(3000, 590); // 19.7%: within the margin
    assert_eq!(judge_canary(&s, &k, &c), Verdict::Pass);
    k.conversion = proportion(100, 10);
    assert!(matches!(judge_canary(&s, &k, &c), Verdict::Inconclusive(_)));
}

fn ab() -> AbCriteria {
    AbCriteria { metric: Metric::Conversion, alpha: 0.05, tau2: 0.05 * 0.05, min_samples: 100, guardrails: None }
}

/// Runs one A/B experiment, peeking every `every` samples per arm; returns the declared winner.
fn experiment(rng: &mut StdRng, pa: f64, pb: f64, max: u64, every: u64) -> Option<usize> {
    let (mut a, mut b) = (Window::default(), Window::default());
    let mut n = 0;
    while n < max {
        for _ in 0..every {
            a.requests += 1;
            b.requests += 1;
            a.conversion.add(Unit::Request(rng.random()), f64::from(u8::from(rng.random_bool(pa))));
            b.conversion.add(Unit::Request(rng.random()), f64::from(u8::from(rng.random_bool(pb))));
        }
        n += every;
        if let AbOutcome::Winner { arm, .. } = judge_ab(&[&a, &b], &[1.0, 1.0], &ab()) {
            return Some(arm);
        }
    }
    None
}

#[test]
fn an_ab_test_finds_a_true_five_point_difference() {
    let mut rng = StdRng::seed_from_u64(7);
    let runs = 50;
    let winners: Vec<Option<usize>> = (0..runs).map(|_| experiment(&mut rng, 0.10, 0.15, 5000, 50)).collect();
    let right = winners.iter().filter(|w| **w == Some(1)).count();
    let wrong = winners.iter().filter(|w| **w == Some(0)).count();
    println!("true 5-point difference: B found in {right} of {runs} runs, A in {wrong}");
    assert!(right >= 45, "found B in {right} of {runs} runs");
    assert_eq!(wrong, 0);
}

#[test]
fn peeking_at_every_interval_keeps_false_winners_under_alpha() {
    let mut rng = StdRng::seed_from_u64(8);
    let runs = 300;
    let false_winners = (0..runs).filter(|_| experiment(&mut rng, 0.10, 0.10, 3000, 50).is_some()).count();
    let rate = false_winners as f64 / runs as f64;
    println!("null difference, peeking every 50 samples: {false_winners} of {runs} declared a winner ({rate:.3})");
    assert!(rate <= ab().alpha, "{false_winners} of {runs} null experiments declared a winner ({rate})");
}

#[test]
fn a_sample_ratio_mismatch_is_detected() {
    let (mut a, mut b) = (Window::default(), Window::default());
    a.requests = 5000;
    b.requests = 4500;
    assert!(matches!(judge_ab(&[&a, &b], &[1.0, 1.0], &ab()), AbOutcome::SampleRatioMismatch { .. }));
    b.requests = 4950;
    assert!(matches!(judge_ab(&[&a, &b], &[1.0, 1.0], &ab()), AbOutcome::Continue { .. }));
    assert!(sample_ratio_p(&[900, 100], &[90.0, 10.0]).unwrap() > 0.5);
}

#[test]
fn a_harmful_arm_trips_its_guardrail() {
    let mut rng = StdRng::seed_from_u64(9);
    let (a, b) = (window(&mut rng, 1000, 0.0, 10.0), window(&mut rng, 1000, 0.08, 10.0));
    let c = AbCriteria { guardrails: Some(criteria()), ..ab() };
    assert!(matches!(judge_ab(&[&a, &b], &[1.0, 1.0], &c), AbOutcome::Guardrail { arm: 1, .. }));
}

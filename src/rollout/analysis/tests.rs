use super::*;
use crate::telemetry::window::{Goal, Unit};
use hdrhistogram::Histogram;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::time::Duration;

/// `n` 0/1 outcomes of which `k` are 1, each from its own unit (hashed ids, as real ones are).
pub(crate) fn proportion(n: u64, k: u64) -> Goal {
    let mut g = Goal::default();
    for i in 0..n {
        g.add(Unit::Request(xxhash_rust::xxh3::xxh3_64(&i.to_le_bytes())), f64::from(u8::from(i < k)));
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
fn twice_the_p99_fails_with_a_significant_tail() {
    let mut rng = StdRng::seed_from_u64(3);
    let (s, c) = (window(&mut rng, 2000, 0.0, 10.0), window(&mut rng, 500, 0.0, 20.0));
    let Verdict::Fail(why) = judge_canary(&s, &c, &criteria()) else { panic!() };
    assert!(why.contains("x stable's"), "{why}");
    assert!(why.contains("tail test"), "{why}");
}

#[test]
fn too_little_traffic_is_inconclusive_never_fail() {
    let mut rng = StdRng::seed_from_u64(4);
    let (s, c) = (window(&mut rng, 2000, 0.0, 10.0), window(&mut rng, 50, 0.5, 50.0));
    assert_eq!(judge_canary(&s, &c, &criteria()), Verdict::Inconclusive("canary has 50 of 200 samples".into()));
}

/// One-sided Mann-Whitney U p-value that `b` is larger than `a` (normal approximation with
/// ties): the test the tail test replaced, kept here to show what it missed.
fn mann_whitney_greater(a: &Histogram<u64>, b: &Histogram<u64>) -> f64 {
    let (na, nb) = (a.len() as f64, b.len() as f64);
    let mut values: Vec<(u64, f64, f64)> = Vec::new();
    for (h, side) in [(a, 0), (b, 1)] {
        for v in h.iter_recorded() {
            let count = v.count_at_value() as f64;
            let (ca, cb) = if side == 0 { (count, 0.0) } else { (0.0, count) };
            values.push((h.highest_equivalent(v.value_iterated_to()), ca, cb));
        }
    }
    values.sort_by_key(|v| v.0);
    let (mut rank, mut rank_sum_b, mut ties, mut i) = (0.0f64, 0.0f64, 0.0f64, 0);
    while i < values.len() {
        let (mut ka, mut kb, v) = (0.0, 0.0, values[i].0);
        while i < values.len() && values[i].0 == v {
            ka += values[i].1;
            kb += values[i].2;
            i += 1;
        }
        let t = ka + kb;
        rank_sum_b += kb * (rank + (t + 1.0) / 2.0);
        rank += t;
        ties += t * t * t - t;
    }
    let n = na + nb;
    let var = na * nb / 12.0 * ((n + 1.0) - ties / (n * (n - 1.0)));
    stats::normal_sf((rank_sum_b - nb * (nb + 1.0) / 2.0 - na * nb / 2.0) / var.sqrt())
}

/// Latencies lognormal around `ms`, a share `slow` of them `extra` ms slower.
fn tail_window(rng: &mut StdRng, n: u64, ms: f64, slow: f64, extra: f64) -> Window {
    let mut w = Window::default();
    for _ in 0..n {
        let z: f64 = (0..12).map(|_| rng.random::<f64>()).sum::<f64>() - 6.0;
        let latency = ms * (0.5 * z).exp() + if rng.random_bool(slow) { extra } else { 0.0 };
        w.record(Duration::from_secs_f64(latency / 1000.0), false, Unit::Request(rng.random()));
    }
    w
}

#[test]
fn a_slow_tail_is_caught_by_the_tail_test_where_ranks_see_nothing() {
    let mut rng = StdRng::seed_from_u64(5);
    let stable = tail_window(&mut rng, 20_000, 20.0, 0.0, 0.0);
    let canary = tail_window(&mut rng, 2_000, 20.0, 0.02, 100.0);
    let tail = stats::tail_counts(&stable.latency, &canary.latency, 0.99).unwrap();
    assert!(tail.p_value() < 1e-6, "{tail:?}: p={}", tail.p_value());
    let mw = mann_whitney_greater(&stable.latency, &canary.latency);
    assert!(mw > 0.001, "Mann-Whitney does not see 2% of answers 100 ms slower: p={mw}");
    let Verdict::Fail(why) = judge_canary(&stable, &canary, &criteria()) else { panic!() };
    assert!(why.contains("tail test"), "{why}");
    // The same histograms without a slow tail: no evidence, whatever the ratio of noisy p99s.
    let same = tail_window(&mut rng, 2_000, 20.0, 0.0, 0.0);
    assert!(stats::tail_counts(&stable.latency, &same.latency, 0.99).unwrap().p_value() > 0.01);
}

#[test]
fn an_error_rate_over_the_limit_needs_significance_to_fail() {
    let mut c = criteria();
    c.max_error_rate_increase = None;
    let mut rng = StdRng::seed_from_u64(16);
    let stable = window(&mut rng, 2000, 0.0, 10.0);
    let mut canary = window(&mut rng, 300, 0.0, 10.0);
    canary.errors = 5; // 1.67% over the 1% ceiling, but P(X >= 5 | 300, 1%) = 0.18
    let Verdict::Inconclusive(why) = judge_canary(&stable, &canary, &c) else { panic!() };
    assert!(why.contains("not yet significant"), "{why}");
    canary.errors = 15; // 5%: p = 1e-5
    assert!(matches!(judge_canary(&stable, &canary, &c), Verdict::Fail(_)));
    // The increase over stable: a two-proportion test against the allowed increase.
    let mut c = criteria();
    c.max_error_rate = None;
    let mut stable = window(&mut rng, 2000, 0.0, 10.0);
    stable.errors = 20; // 1%
    canary.errors = 6; // 2%: one point over, limit 0.5, p = 0.08
    let Verdict::Inconclusive(why) = judge_canary(&stable, &canary, &c) else { panic!() };
    assert!(why.contains("points over stable"), "{why}");
    canary.errors = 18; // 6%
    let Verdict::Fail(why) = judge_canary(&stable, &canary, &c) else { panic!() };
    assert!(why.contains("z-test"), "{why}");
}

#[test]
fn the_business_guard_passes_only_on_shown_non_inferiority() {
    let mut c = criteria();
    c.business = Some(BusinessGuard { metric: Metric::Conversion, margin: 0.01, min_samples: 500 });
    let mut rng = StdRng::seed_from_u64(6);
    let mut s = window(&mut rng, 3000, 0.0, 10.0);
    let mut k = window(&mut rng, 3000, 0.0, 10.0);
    s.conversion = proportion(3000, 600); // 20%
    k.conversion = proportion(3000, 450); // 15%: shown worse than the 1-point margin
    assert!(matches!(judge_canary(&s, &k, &c), Verdict::Fail(_)));
    k.conversion = proportion(3000, 590); // 19.7%: within the margin, but not shown to be
    let Verdict::Inconclusive(why) = judge_canary(&s, &k, &c) else { panic!() };
    assert!(why.contains("not yet shown"), "{why}");
    s.conversion = proportion(60_000, 12_000);
    k.conversion = proportion(60_000, 11_950); // 19.92% on 60 000 each: shown within the margin
    assert_eq!(judge_canary(&s, &k, &c), Verdict::Pass);
    k.conversion = proportion(100, 10);
    assert!(matches!(judge_canary(&s, &k, &c), Verdict::Inconclusive(_)));
}

#[test]
fn a_users_correlated_outcomes_count_once() {
    // 40 users, each reporting 250 identical outcomes: 10 000 samples but 40 independent units.
    let mut g = Goal::default();
    for u in 0..40u64 {
        for _ in 0..250 {
            g.add(Unit::Key(u * 7919), f64::from(u8::from(u % 4 == 0)));
        }
    }
    let naive = g.variance() / g.n as f64;
    let clustered = stats::goal_estimate(&g).unwrap();
    assert!((clustered.mean - g.mean).abs() < 1e-12);
    assert!(clustered.var > 100.0 * naive, "cluster variance {} vs per-sample {naive}", clustered.var);
    // One sample per unit: about the per-sample variance.
    let g = proportion(5000, 1000);
    let e = stats::goal_estimate(&g).unwrap();
    let naive = g.variance() / g.n as f64;
    assert!((e.var / naive - 1.0).abs() < 0.15, "{} vs {naive}", e.var);
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

/// Sticky users with heavy-tailed request counts, split 50/50 by a hash; `skew` of arm 1's
/// users are lost (a broken assignment). Returns the two arms' windows.
fn sticky_arms(rng: &mut StdRng, users: u64, skew: f64) -> (Window, Window) {
    let (mut a, mut b) = (Window::default(), Window::default());
    for u in 0..users {
        let id: u64 = rng.random();
        let requests = (1.0 - rng.random::<f64>()).powf(-1.0 / 1.1).min(20_000.0) as u64;
        let arm = xxhash_rust::xxh3::xxh3_64(&id.to_le_bytes()) % 2;
        if arm == 1 && (u as f64 / users as f64) < skew {
            continue;
        }
        let w = if arm == 0 { &mut a } else { &mut b };
        for _ in 0..requests {
            w.record(Duration::from_millis(10), false, Unit::Key(id));
        }
    }
    (a, b)
}

#[test]
fn sample_ratio_is_judged_on_units_not_requests() {
    let mut rng = StdRng::seed_from_u64(10);
    let mut request_alarms = 0;
    for _ in 0..20 {
        let (a, b) = sticky_arms(&mut rng, 4000, 0.0);
        if sample_ratio_p(&[a.requests, b.requests], &[1.0, 1.0]).unwrap() < 0.001 {
            request_alarms += 1;
        }
        let out = judge_ab(&[&a, &b], &[1.0, 1.0], &ab());
        assert!(matches!(out, AbOutcome::Continue { .. }), "correct assignment judged {out:?}");
    }
    assert!(request_alarms >= 10, "per-request chi-square alarmed in only {request_alarms} of 20");
    // A real mismatch: 10% of arm 1's users lost.
    let (a, b) = sticky_arms(&mut rng, 20_000, 0.1);
    assert!(matches!(judge_ab(&[&a, &b], &[1.0, 1.0], &ab()), AbOutcome::SampleRatioMismatch { .. }));
    assert!(sample_ratio_p(&[900, 100], &[90.0, 10.0]).unwrap() > 0.5);
}

#[test]
fn a_harmful_arm_trips_its_guardrail() {
    let mut rng = StdRng::seed_from_u64(9);
    let (a, b) = (window(&mut rng, 1000, 0.0, 10.0), window(&mut rng, 1000, 0.08, 10.0));
    let c = AbCriteria { guardrails: Some(criteria()), ..ab() };
    assert!(matches!(judge_ab(&[&a, &b], &[1.0, 1.0], &c), AbOutcome::Guardrail { arm: 1, .. }));
}

#[test]
fn a_few_heavy_users_need_more_evidence_than_a_normal_quantile() {
    let mut c = criteria();
    c.business = Some(BusinessGuard { metric: Metric::Conversion, margin: 0.01, min_samples: 500 });
    let mut rng = StdRng::seed_from_u64(17);
    let (mut s, mut k) = (window(&mut rng, 3000, 0.0, 10.0), window(&mut rng, 3000, 0.0, 10.0));
    // Stable: 20% on 20 000 units. Canary: 8 users with 400 outcomes each, converting 6%..20%:
    // 13% on 3200 samples but 8 units.
    s.conversion = proportion(20_000, 4000);
    let mut g = Goal::default();
    for u in 0..8u64 {
        g.add_proportion(Unit::Key(u * 1031 + 5), 400, 24 + 8 * u);
    }
    k.conversion = g;
    let (es, ek) = (stats::goal_estimate(&s.conversion).unwrap(), stats::goal_estimate(&k.conversion).unwrap());
    assert!(ek.effective_cells < 8.5, "{ek:?}");
    let z = (ek.mean - es.mean + 0.01) / (es.var + ek.var).sqrt();
    let alpha = c.alpha / 4.0;
    assert!(z < stats::normal_quantile(alpha), "z={z}: a normal critical value would fail the canary");
    let Verdict::Inconclusive(why) = judge_canary(&s, &k, &c) else { panic!("z={z}") };
    assert!(why.contains("not yet shown"), "{why}");
}

use super::table::{standard_rows, Summary, Target};
use super::*;

/// The simulator's code path, a few short runs of every standard row: it cannot rot.
#[test]
fn every_standard_row_runs_a_few_rollouts() {
    for mut row in standard_rows() {
        // Shorter and thinner than `make decisions`, so the debug build stays fast.
        row.scenario.traffic.users = 2_000;
        if let Experiment::Ab { horizon, .. } = &mut row.scenario.experiment {
            *horizon = Duration::from_secs(600);
        }
        let results = run_many(&row.scenario, 2, 7, 2);
        assert_eq!(results.len(), 2);
        let s = Summary::of(&results);
        assert_eq!(s.runs, 2);
        if let Target::RolledBackAtLeast(_) = row.target {
            assert_eq!(s.rolled_back, 2, "{}: {results:?}", row.scenario.name);
        }
    }
}

#[test]
fn runs_are_reproducible_whatever_the_threads() {
    let row = &standard_rows()[2];
    let mut s = row.scenario.clone();
    s.traffic.users = 1_000;
    let one: Vec<_> = run_many(&s, 3, 11, 1).into_iter().map(|r| r.at_ms).collect();
    let two: Vec<_> = run_many(&s, 3, 11, 2).into_iter().map(|r| r.at_ms).collect();
    assert_eq!(one, two);
}

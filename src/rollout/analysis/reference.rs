//! Checks every statistics primitive against scipy's values (`reference.json`, written by
//! `scripts/reference_stats.py` with pinned scipy and numpy; committed, so no Python is needed).

use super::stats::*;
use crate::telemetry::window::{Goal, Unit};
use serde_json::Value;

const REFERENCE: &str = include_str!("reference.json");

fn reference() -> Value {
    serde_json::from_str(REFERENCE).expect("reference.json is valid JSON")
}

fn rows<'a>(r: &'a Value, key: &str) -> &'a Vec<Value> {
    r[key].as_array().unwrap_or_else(|| panic!("reference.json has no {key}"))
}

fn f(v: &Value) -> f64 {
    v.as_f64().unwrap_or_else(|| panic!("{v} is not a number"))
}

fn u(v: &Value) -> u64 {
    v.as_u64().unwrap_or_else(|| panic!("{v} is not a count"))
}

fn counts(v: &Value) -> Vec<u64> {
    v.as_array().expect("a list").iter().map(u).collect()
}

fn floats(v: &Value) -> Vec<f64> {
    v.as_array().expect("a list").iter().map(f).collect()
}

#[track_caller]
fn close(what: &str, got: f64, want: f64) {
    let ok = if want == 0.0 { got.abs() < 1e-300 } else { ((got - want) / want).abs() <= 1e-6 };
    assert!(ok, "{what}: got {got:e}, scipy says {want:e}");
}

#[test]
fn distributions_match_scipy() {
    let r = reference();
    for row in rows(&r, "normal_cdf") {
        close(&format!("normal_cdf({})", row[0]), normal_cdf(f(&row[0])), f(&row[1]));
    }
    for row in rows(&r, "normal_sf") {
        close(&format!("normal_sf({})", row[0]), normal_sf(f(&row[0])), f(&row[1]));
    }
    for row in rows(&r, "normal_quantile") {
        close(&format!("normal_quantile({})", row[0]), normal_quantile(f(&row[0])), f(&row[1]));
    }
    for row in rows(&r, "student_t_upper_quantile") {
        let got = student_t_upper_quantile(f(&row[0]), f(&row[1]));
        close(&format!("student_t_upper_quantile{row}"), got, f(&row[2]));
    }
    for row in rows(&r, "chi_square_sf") {
        let got = chi_square_sf(f(&row[0]), f(&row[1])).unwrap();
        close(&format!("chi_square_sf{row}"), got, f(&row[2]));
    }
    for row in rows(&r, "binomial_sf_at_least") {
        let got = binomial_sf_at_least(u(&row[0]), u(&row[1]), f(&row[2]));
        close(&format!("binomial_sf_at_least{row}"), got, f(&row[3]));
    }
    for row in rows(&r, "hypergeometric_sf_at_least") {
        let got = hypergeometric_sf_at_least(u(&row[0]), u(&row[1]), u(&row[2]), u(&row[3]));
        close(&format!("hypergeometric_sf_at_least{row}"), got, f(&row[4]));
    }
}

#[test]
fn tests_match_their_reference_formulas() {
    let r = reference();
    for row in rows(&r, "two_proportion_z") {
        let got = two_proportion_z(u(&row[0]), u(&row[1]), u(&row[2]), u(&row[3]), f(&row[4])).unwrap();
        close(&format!("two_proportion_z{row}"), got, f(&row[5]));
    }
    for row in rows(&r, "msprt") {
        let got = msprt_lr(f(&row[0]), f(&row[1]), f(&row[2])).unwrap();
        close(&format!("msprt{row}"), got, f(&row[3]));
    }
    for row in rows(&r, "srm_log_bf") {
        let got = srm_log_bayes_factor(&counts(&row[0]), &floats(&row[1]), f(&row[2])).unwrap();
        close(&format!("srm_log_bf{row}"), got, f(&row[3]));
    }
    for row in rows(&r, "sample_ratio_p") {
        let got = sample_ratio_p(&counts(&row[0]), &floats(&row[1])).unwrap();
        close(&format!("sample_ratio_p{row}"), got, f(&row[2]));
    }
}

#[test]
fn goal_moments_match_numpy() {
    let r = reference();
    let c = &r["cluster"];
    let mut g = Goal::default();
    for (unit, value) in counts(&c["units"]).into_iter().zip(floats(&c["values"])) {
        g.add(Unit::Key(unit), value);
    }
    let e = goal_estimate(&g).unwrap();
    close("cluster mean", e.mean, f(&c["mean"]));
    close("cluster variance of the mean", e.var, f(&c["var"]));
    assert_eq!(e.cells as u64, u(&c["cells"]));
    close("effective cells", e.effective_cells, f(&c["effective_cells"]));
    let w = &r["welford"];
    let mut g = Goal::default();
    for (i, v) in floats(&w["values"]).into_iter().enumerate() {
        g.add(Unit::Request(i as u64), v);
    }
    close("Welford mean", g.mean, f(&w["mean"]));
    close("Welford variance (ddof=1)", g.variance(), f(&w["var"]));
}

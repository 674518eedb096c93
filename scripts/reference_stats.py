#!/usr/bin/env python3
"""Reference values for modelgate's analysis statistics, from scipy/numpy.

Writes src/rollout/analysis/reference.json; a Rust unit test (src/rollout/analysis/reference.rs)
reads it with include_str! and checks every primitive to 1e-6 relative. `make test` does not
need Python: the JSON is committed. Regenerate with the pinned versions:

    python3 -m venv /tmp/venv && /tmp/venv/bin/pip install scipy==1.14.1 numpy==2.1.3
    /tmp/venv/bin/python scripts/reference_stats.py

Pinned: scipy==1.14.1, numpy==2.1.3 (Python 3.11).
"""
import json
import os

import numpy as np
import scipy
from scipy import special, stats

assert scipy.__version__ == "1.14.1", scipy.__version__
assert np.__version__ == "2.1.3", np.__version__

CELLS = 1024
OUT = os.path.join(os.path.dirname(__file__), "..", "src", "rollout", "analysis", "reference.json")


def two_proportion_z(x_c, n_c, x_s, n_s, delta):
    """(p_c - p_s - delta) / se, se at the null boundary p_c = p_s + delta (pooled when delta = 0)."""
    pc, ps = x_c / n_c, x_s / n_s
    base = (x_c + x_s - n_c * delta) / (n_c + n_s)
    p0s = min(max(base, 0.0), max(1.0 - delta, 0.0))
    p0c = min(max(p0s + delta, 0.0), 1.0)
    var = p0s * (1 - p0s) / n_s + p0c * (1 - p0c) / n_c
    return (pc - ps - delta) / np.sqrt(var)


def pooled_z_statsmodels_form(x_c, n_c, x_s, n_s):
    """The textbook pooled two-proportion z (what statsmodels' proportions_ztest computes)."""
    p = (x_c + x_s) / (n_c + n_s)
    return (x_c / n_c - x_s / n_s) / np.sqrt(p * (1 - p) * (1 / n_c + 1 / n_s))


def cluster_variance(units, values):
    """Cluster-robust variance of the ratio mean, clusters = unit id mod 1024."""
    cells = {}
    for u, v in zip(units, values):
        n, s = cells.get(u % CELLS, (0, 0.0))
        cells[u % CELLS] = (n + 1, s + v)
    n = np.array([c[0] for c in cells.values()], dtype=float)
    s = np.array([c[1] for c in cells.values()])
    mean = s.sum() / n.sum()
    k = len(cells)
    return mean, k / (k - 1) * np.sum((s - mean * n) ** 2) / n.sum() ** 2, k, n.sum() ** 2 / np.sum(n**2)


def msprt(theta, v, tau2):
    return np.sqrt(v / (v + tau2)) * np.exp(tau2 * theta**2 / (2 * v * (v + tau2)))


def srm_log_bf(counts, weights, concentration):
    theta = np.array(weights, dtype=float) / np.sum(weights)
    x = np.array(counts, dtype=float)
    a = concentration * theta
    return float(
        special.gammaln(a.sum()) - special.gammaln(a.sum() + x.sum())
        + np.sum(special.gammaln(a + x) - special.gammaln(a)) - np.sum(x * np.log(theta))
    )


def main():
    out = {"scipy": scipy.__version__, "numpy": np.__version__}
    out["normal_cdf"] = [[z, stats.norm.cdf(z)] for z in [-8.0, -3.3, -1.96, -0.5, 0.0, 0.7, 1.645, 2.5, 5.0]]
    out["normal_sf"] = [[z, stats.norm.sf(z)] for z in [-2.0, 0.0, 1.0, 2.326, 3.5, 6.0, 9.0]]
    out["normal_quantile"] = [[p, stats.norm.ppf(p)] for p in [1e-9, 1e-5, 0.001, 0.025, 0.3, 0.5, 0.95, 0.99, 0.9999, 1 - 1e-7]]
    out["student_t_upper_quantile"] = [[a, df, stats.t.isf(a, df)] for a, df in [(0.05, 1), (0.01, 5), (1e-4, 30), (7e-5, 12.5), (1e-6, 200), (0.3, 3)]]
    out["chi_square_sf"] = [[x, df, stats.chi2.sf(x, df)] for x, df in [(0.5, 1), (3.84, 1), (10.0, 1), (7.0, 2), (30.0, 3), (0.1, 4)]]
    out["binomial_sf_at_least"] = [
        [k, n, p, stats.binom.sf(k - 1, n, p)]
        for k, n, p in [(1, 10, 0.1), (5, 300, 0.01), (15, 300, 0.01), (25, 500, 0.02), (60, 1000, 0.02), (3, 50, 0.2), (400, 10000, 0.03)]
    ]
    # scipy's hypergeom(M = population, n = successes, N = draws).
    out["hypergeometric_sf_at_least"] = [
        [k, pop, succ, draws, stats.hypergeom.sf(k - 1, pop, succ, draws)]
        for k, pop, succ, draws in [(1, 100, 10, 10), (17, 6000, 60, 600), (6, 6000, 60, 600), (40, 22000, 220, 2000), (10, 1000, 10, 100), (3, 50, 5, 20)]
    ]
    cases = [(30, 1000, 20, 2000, 0.0), (60, 1000, 20, 2000, 0.01), (18, 300, 20, 2000, 0.005), (5, 300, 0, 2000, 0.0), (120, 4000, 90, 4000, 0.002)]
    out["two_proportion_z"] = [[xc, nc, xs, ns, d, two_proportion_z(xc, nc, xs, ns, d)] for xc, nc, xs, ns, d in cases]
    for row in out["two_proportion_z"]:
        if row[4] == 0.0:
            assert abs(row[5] - pooled_z_statsmodels_form(*row[:4])) < 1e-12
    # A fixed dataset: 600 outcomes of 97 units (ids beyond 1024, some sharing a cell).
    units = [((i * 7919) % 97) * 1031 + (i % 3) * CELLS * 5 for i in range(600)]
    values = [float((i * 37) % 11 > 6) + 0.25 * ((i * 13) % 5) for i in range(600)]
    mean, var, k, eff = cluster_variance(units, values)
    out["cluster"] = {"units": units, "values": values, "mean": mean, "var": var, "cells": k, "effective_cells": eff}
    big = [1e6 + ((i * 37) % 101) / 7.0 for i in range(2000)]
    out["welford"] = {"values": big, "mean": float(np.mean(big)), "var": float(np.var(big, ddof=1))}
    out["msprt"] = [[t, v, tau2, msprt(t, v, tau2)] for t, v, tau2 in [(0.0, 1e-4, 4e-4), (0.02, 1e-4, 4e-4), (0.05, 2.5e-4, 2.5e-3), (-0.01, 5e-6, 1e-4)]]
    out["srm_log_bf"] = [
        [c, w, conc, srm_log_bf(c, w, conc)]
        for c, w, conc in [([5000, 4500], [1, 1], 100.0), ([5000, 4950], [1, 1], 100.0), ([900, 100], [90, 10], 100.0), ([3000, 3100, 2800], [1, 1, 1], 50.0), ([0, 0], [1, 1], 100.0)]
    ]
    out["sample_ratio_p"] = [
        [c, w, stats.chisquare(c, np.array(w) / np.sum(w) * np.sum(c)).pvalue]
        for c, w in [([5000, 4500], [1, 1]), ([900, 100], [90, 10]), ([3000, 3100, 2800], [1, 1, 1])]
    ]
    # One key per line: readable diffs when a value changes.
    lines = [f"{json.dumps(k)}: {json.dumps(v, default=float)}" for k, v in out.items()]
    with open(OUT, "w") as f:
        f.write("{\n" + ",\n".join(lines) + "\n}\n")
    print(f"wrote {os.path.normpath(OUT)}")


if __name__ == "__main__":
    main()

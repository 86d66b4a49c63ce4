"""Successive halving on a synthetic score oracle; the scaling fit recovers a planted power law."""

import math

import pytest

from amylum.selection.halving import successive_halving
from amylum.selection.scaling import fit_log_log, fit_tail


class Oracle:
    """error(arm, r) = a_arm · r^b_arm; counts the steps a resuming trainer would add."""

    def __init__(self, curves, full_steps=1000):
        self.curves, self.full = curves, full_steps
        self.at = {arm: 0 for arm in curves}
        self.added = 0
        self.calls = []

    def __call__(self, arm, r):
        steps = round(r * self.full)
        assert steps >= self.at[arm], "halving asked to train backwards"
        self.added += steps - self.at[arm]  # resume: only the new steps cost
        self.at[arm] = steps
        self.calls.append((arm, r))
        a, b = self.curves[arm]
        return a * r ** b


def test_keeps_the_best_arms_and_reuses_checkpoints():
    curves = {f"c{i}": (1.0 + 0.1 * i, -0.3) for i in range(8)}  # c0 best … c7 worst at every r
    oracle = Oracle(curves)
    res = successive_halving(list(curves), oracle, initial_fraction=0.03, eta=2, max_fraction=0.125, min_survivors=3)
    assert [r.fraction for r in res.rungs] == pytest.approx([0.03, 0.06])  # 8 → 4 → 3
    assert res.survivors == ["c0", "c1", "c2"]
    assert res.rungs[0].pruned == ["c4", "c5", "c6", "c7"]
    assert "ranks 5/8" in res.rungs[0].reasons["c4"]
    # checkpoint reuse: each arm costs its largest fraction, not the sum of its rungs
    assert oracle.added == sum(oracle.at.values()) == 4 * 30 + 4 * 60


def test_stops_at_max_fraction():
    curves = {f"c{i}": (1.0 + i, -0.5) for i in range(40)}
    res = successive_halving(list(curves), Oracle(curves), initial_fraction=0.03, eta=2, max_fraction=0.125, min_survivors=3)
    assert [r.fraction for r in res.rungs] == pytest.approx([0.03, 0.06, 0.12])
    assert len(res.survivors) == 5 and "max_fraction" in res.stopped


def test_late_bloomer_is_pruned_by_halving_alone():
    # Mordal's limitation: an arm that is bad early but best at r=1 is pruned by SHA.
    curves = {"steady": (0.5, -0.1), "bloomer": (0.3, -0.5), "other": (0.6, -0.1), "x": (0.7, -0.1)}
    res = successive_halving(list(curves), Oracle(curves), initial_fraction=0.03, eta=2, max_fraction=0.125, min_survivors=2)
    assert "bloomer" not in res.survivors
    assert curves["bloomer"][0] < curves["steady"][0]  # yet it is the best at r = 1


def test_nothing_to_prune():
    res = successive_halving(["a", "b"], lambda a, r: 1 / 0, min_survivors=3)
    assert res.rungs == [] and res.survivors == ["a", "b"]


def test_fit_recovers_planted_power_law():
    rs = [1 / 8, 1 / 4, 1 / 2]
    errs = [0.8 * r ** -0.35 for r in rs]  # error grows as data shrinks
    fit = fit_log_log(rs, errs)
    assert fit.beta == pytest.approx(-0.35, abs=1e-9) and fit.predict(1.0) == pytest.approx(0.8, rel=1e-9)
    assert fit.loss < 1e-20


def test_fit_tail_accepts_only_good_fits_and_skips_an_early_regime():
    rs = [1 / 64, 1 / 32, 1 / 16, 1 / 8, 1 / 4, 1 / 2]
    errs = [0.9, 0.9, 0.5 * (1 / 16) ** -0.2, 0.5 * (1 / 8) ** -0.2, 0.5 * (1 / 4) ** -0.2, 0.5 * (1 / 2) ** -0.2]
    fit, best = fit_tail(rs, errs, min_points=3, max_loss=5e-5)
    assert fit is not None and fit.fractions[0] == pytest.approx(1 / 16) and fit.predict(1.0) == pytest.approx(0.5)
    assert best.loss > 5e-5
    noisy = [e * (1.3 if i % 2 else 0.8) for i, e in enumerate(errs)]
    assert fit_tail(rs, noisy, min_points=3, max_loss=5e-5)[0] is None
    assert fit_tail(rs[:2], errs[:2], min_points=3)[0] is None  # too few points


def test_fit_rejects_bad_input():
    with pytest.raises(ValueError, match="> 0"):
        fit_log_log([0.1, 0.2], [0.0, 1.0])
    with pytest.raises(ValueError, match="distinct"):
        fit_log_log([0.1, 0.1], [1.0, 1.0])
    assert math.isfinite(fit_log_log([0.1, 0.2], [1.0, 0.9]).beta)

"""Frequency plans: JSON round trip, validation (never eval), choosing a point."""

import json

import pytest
from energy_helpers import convex_options, make_dag

from amylum.planner.energy.frontier import solve_frontier
from amylum.planner.energy.plan import FrequencyPlan, PlanError, fastest, for_straggler, pick, sample


@pytest.fixture(scope="module")
def frontier():
    opts = [convex_options(2, 6, 1.0, unit=0.01), convex_options(3, 7, 2.0, unit=0.01),
            convex_options(1, 4, 0.5, unit=0.01)]
    dag = make_dag(opts, [(0, 1)], power=5.0, ranks=[0, 0, 1])
    return solve_frontier(dag, unit_time_s=0.01)


def test_round_trip(frontier, tmp_path):
    plan = fastest(frontier)
    path = tmp_path / "plan.json"
    plan.save(path)
    back = FrequencyPlan.load(path)
    assert back == plan
    assert [s.action for s in back.ranks[0]] == ["F", "F"]
    assert set(back.perseus_lists()) == {0, 1}


def test_pick_and_straggler(frontier):
    t_min, t_star = frontier.t_min_s, frontier.t_star_s
    assert pick(frontier, t_min).iteration_time_s == pytest.approx(t_min)
    mid = pick(frontier, (t_min + t_star) / 2)
    assert t_min <= mid.iteration_time_s <= (t_min + t_star) / 2 + 1e-9
    assert for_straggler(frontier, 10 * t_star).iteration_time_s == pytest.approx(t_star)  # min(T′, T*)
    assert for_straggler(frontier, t_min).iteration_time_s == pytest.approx(t_min)
    with pytest.raises(PlanError, match="shortest"):
        pick(frontier, t_min * 0.5)
    plans = sample(frontier, 3)
    assert plans[0].iteration_time_s == pytest.approx(t_min) and plans[-1].iteration_time_s == pytest.approx(t_star)


def test_malformed_plans_are_rejected(frontier):
    good = fastest(frontier).to_dict()
    with pytest.raises(PlanError, match="JSON"):
        FrequencyPlan.from_json("{'ranks': __import__('os')}")  # a Python literal is not a plan
    with pytest.raises(PlanError, match="format"):
        FrequencyPlan.from_json(json.dumps({"ranks": {}}))
    bad = json.loads(json.dumps(good))
    bad["ranks"]["0"][0]["mhz"] = "1410"
    with pytest.raises(PlanError, match="mhz"):
        FrequencyPlan.from_dict(bad)
    bad = json.loads(json.dumps(good))
    bad["ranks"]["0"][0]["action"] = "X"
    with pytest.raises(PlanError, match="action"):
        FrequencyPlan.from_dict(bad)
    bad = json.loads(json.dumps(good))
    bad["version"] = 99
    with pytest.raises(PlanError, match="version"):
        FrequencyPlan.from_dict(bad)

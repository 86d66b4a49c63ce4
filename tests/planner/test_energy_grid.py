"""The energy-grid bench's building blocks on tiny plans: DAG from a plan, frontier ends, savings."""

import importlib.util
import pathlib

import pytest
from helpers_planner import mm_model, unit_cluster

from amylum.planner.energy.dag import Option
from amylum.planner.energy.from_plan import H100, all_max, frontier_for, plan_dag, savings, within
from amylum.planner.energy.profiles import FrequencyProfile, ProfileError
from amylum.planner.plan import Plan, StagePlan, assign_ranks

ROOT = pathlib.Path(__file__).resolve().parents[2]


def frozen_plan(schedule: str = "1f1b", m: int = 4) -> Plan:
    """Stage 0: the frozen vision encoder (no backward); 1: vision projector; 2: audio; 3: LLM."""
    model = mm_model()  # encoders frozen, projectors trainable, LLM frozen (needs B for the projectors)
    layers = {0: ("vision.encoder.layers.0", "vision.encoder.layers.1"), 1: ("vision.projector",),
              2: ("audio.encoder.layers.0", "audio.encoder.layers.1", "audio.projector"),
              3: tuple(l.name for l in model.llm)}
    inputs = {0: (), 1: (0,), 2: (), 3: (1, 2)}
    ranks = assign_ranks([1, 1, 1, 1], 1)
    stages = tuple(StagePlan(s, "x", layers[s], 1, inputs[s], ranks[s]) for s in range(4))
    return Plan("mm", "modality_parallel", 1, 1, m, m, stages, schedule=schedule, world_size=4)


@pytest.fixture(scope="module")
def cell():
    plan, model, cluster = frozen_plan(), mm_model(), unit_cluster(4, 4)
    pd = plan_dag(plan, model, cluster)
    fr = frontier_for(pd)
    return pd, fr


def test_dag_from_plan_frozen_stage(cell):
    pd, _ = cell
    kinds = {s: {n.kind for n in pd.dag.nodes if n.stage == s} for s in range(4)}
    assert pd.frozen_stages == (0,)
    assert kinds[0] == {"F"} and kinds[1] == {"F", "B"} and kinds[3] == {"F", "B"}
    assert len(pd.dag.nodes) == 4 + 3 * 2 * 4  # frozen stage: F only
    assert pd.times_at_max[(0, "F")] == pytest.approx(2.0)  # two 1e9-FLOP layers at 1e9 FLOP/s
    assert pd.sim_iteration_s >= pd.dag.makespan([o.time_s for o in all_max(pd.dag)]) - 1e-9


def test_frontier_endpoints(cell):
    pd, fr = cell
    t0 = pd.dag.makespan([o.time_s for o in all_max(pd.dag)])
    # fastest end: the all-max makespan, up to rounding each time up to τ along the path
    assert t0 <= fr.t_min_s <= t0 * (1 + 1e-3)
    assert fr.t_star_s / t0 == pytest.approx(1.3, abs=0.02)  # H100 model: least e' at 0.75 f_max
    # slow end: every computation at its least effective energy e' = e - P_blocking·t
    star = fr.point(fr.t_max_units)
    for node, opt in zip(pd.dag.nodes, star.options):
        p = pd.dag.blocking_power_w[node.rank]
        best = min(o.energy_j - p * o.time_s for o in node.options)
        assert opt.energy_j - p * opt.time_s == pytest.approx(best, rel=1e-6)
    fast = fr.point(fr.t_min_units)
    assert pd.dag.makespan([o.time_s for o in fast.options]) <= fr.t_min_s + 1e-9


def test_savings_and_frozen_slack(cell):
    pd, fr = cell
    sv = savings(pd, fr)
    assert 0.0 < sv.saved_1pct < sv.saved_t_star
    assert sv.slowdown_1pct <= 0.01 + 1e-9
    assert sv.saved_straggler > 0.0
    assert sv.frozen_idle_share > sv.idle_share  # the F-only stage waits most
    assert sv.mean_mhz_1pct[0] < H100.f_max_mhz  # and is slowed for free
    assert within(fr, 1e9).units == fr.t_max_units and within(fr, 0.0).units == fr.t_min_units


def test_single_stage_saves_only_uniform_downclock():
    plan, model, cluster = frozen_plan(), mm_model(), unit_cluster(4, 4)
    one = Plan("mm", "colocated", 1, 1, 2, 2, (StagePlan(0, "colocated", tuple(l.name for l in model.all_layers()),
                                                         1, (), ((0,),)),), world_size=1)
    pd = plan_dag(one, model, cluster)
    sv = savings(pd, frontier_for(pd))
    assert sv.idle_share == pytest.approx(0.0, abs=1e-12) and sv.frozen_idle_share is None
    assert 0.0 < sv.saved_1pct < 0.03  # no slack: only the 1 % slowdown is traded


def test_zero_bubble_plan_and_microbatch_override():
    pd = plan_dag(frozen_plan("zb"), mm_model(), unit_cluster(4, 4), microbatches=2)
    assert pd.microbatches == 2
    assert any(n.kind == "W" for n in pd.dag.nodes)  # W split off B under zero-bubble
    with pytest.raises(ValueError, match="microbatches"):
        plan_dag(frozen_plan(), mm_model(), unit_cluster(4, 4), microbatches=0)


def test_measured_profile_must_cover_the_plan():
    partial = FrequencyProfile({(0, "F"): (Option(1980, 1.0, 500.0),)})
    with pytest.raises(ProfileError, match="lacks"):
        plan_dag(frozen_plan(), mm_model(), unit_cluster(4, 4), profile=partial)


def test_bench_runs_on_tiny(capsys):
    spec = importlib.util.spec_from_file_location("energy_grid", ROOT / "bench" / "energy_grid.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    assert bench.main(["--models", "tiny", "--scenarios", "frozen_encoders", "--gpus", "4", "--global-batch", "8",
                       "--mp-models", "tiny"]) == 0
    out = capsys.readouterr().out
    assert "modality-parallel" in out and "saved at <= 1% slowdown" in out

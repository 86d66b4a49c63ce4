"""The total-work lower bound (bounds.py) is below every plan the search and the baselines produce."""

import math
from dataclasses import replace

import pytest

from amylum.planner.baselines import BASELINES, baseline_plan
from amylum.planner.bounds import iteration_lower_bound, lower_bound
from amylum.planner.candidates import build_plan
from amylum.planner.cost import CostModel
from amylum.planner.presets import preset_model
from amylum.planner.search import SearchOptions, rule_candidates, search
from amylum.planner.simulate import simulate
from amylum.planner.spec import FREEZING_SCENARIOS, ClusterSpec, freeze

from helpers_planner import chain_model, mm_model, unit_cluster

EPS = 1e-9


def _plans_checked(model, cluster, batch):
    """Simulated times of the search's best plan, its best 1F1B plan and each baseline's plan."""
    res = search(model, cluster, batch)
    times = {"amylum": res.sim.iteration_s, "amylum-1f1b": res.sim_1f1b.iteration_s}
    for kind in BASELINES:
        b = baseline_plan(model, cluster, batch, kind)
        if b is not None:
            times[kind] = b[1].iteration_s
    return times


@pytest.mark.parametrize("scenario", FREEZING_SCENARIOS)
@pytest.mark.parametrize("gpus", [8, 16])
def test_bound_below_search_and_baselines_tiny(scenario, gpus):
    model = freeze(preset_model("tiny"), scenario)
    cluster = ClusterSpec.of(gpus)
    lb = iteration_lower_bound(model, cluster, 16)
    assert lb > 0
    times = _plans_checked(model, cluster, 16)
    assert len(times) == 2 + len(BASELINES)
    for name, t in times.items():
        assert lb <= t * (1 + EPS), (name, lb, t)


@pytest.mark.parametrize("scenario", ["projector_only", "all_trainable"])
def test_bound_below_search_and_baselines_vlm_small(scenario):
    model = freeze(preset_model("VLM-small"), scenario)
    cluster = ClusterSpec.of(16)
    lb = iteration_lower_bound(model, cluster, 96)
    times = _plans_checked(model, cluster, 96)
    for name, t in times.items():
        assert lb <= t * (1 + EPS), (name, lb, t)
    if scenario == "projector_only":
        # only the projector's tiny gradient to sync and no bubble: pure DP is within 1 % of it
        assert min(times.values()) <= lb * 1.01


def test_bound_below_every_rule_plan_any_schedule():
    """Every hand-rule plan of the search, with each microbatch size, checkpointing and schedule."""
    model = freeze(preset_model("tiny"), "frozen_encoders")
    cluster = ClusterSpec.of(16)
    batch = 16
    lb = iteration_lower_bound(model, cluster, batch)
    opts = SearchOptions()
    cms = {ck: CostModel(cluster, checkpointing=ck) for ck in (False, True)}
    n = 0
    for placement, chosen, mb in rule_candidates(model, opts, (1, 2, 4, 8), cluster.world_size, batch):
        R = sum(o.gpus for o in chosen)
        dp = min(cluster.world_size // R, max(1, batch // mb))
        m = math.ceil(batch / (dp * mb))
        for ck in (False, True):
            plan = build_plan(model, chosen, placement, dp, mb, m, batch, ck, "1f1b")
            for p in (plan, replace(plan, schedule="zb", split_w=True)):
                t = simulate(p, model, cluster, cost_model=cms[ck], validate=False).iteration_s
                assert lb <= t * (1 + EPS), (placement, [(o.chain, o.tp, o.p) for o in chosen], mb, ck, t, lb)
                n += 1
    assert n > 50


def test_bound_scales_inversely_with_gpus():
    model = freeze(preset_model("VALM-small"), "all_trainable")
    b16, b32, b64 = (lower_bound(model, ClusterSpec.of(g), 96) for g in (16, 32, 64))
    assert b16.seconds > 0
    assert b32.seconds == pytest.approx(b16.seconds / 2, rel=1e-12)
    assert b64.seconds == pytest.approx(b16.seconds / 4, rel=1e-12)
    assert b16.gpu_seconds == pytest.approx(b64.gpu_seconds, rel=1e-12)
    assert b16.gpu_seconds == pytest.approx(sum(b16.by_module.values()), rel=1e-12)
    # and linearly with the batch
    assert lower_bound(model, ClusterSpec.of(16), 192).seconds == pytest.approx(2 * b16.seconds, rel=1e-12)


def test_bound_is_frozen_aware():
    """Freezing removes work exactly as the cost model charges it (unit costs: 1 s per F/B/W)."""
    cluster = unit_cluster(8)
    # per branch: 2 encoder layers + projector; LLM: embed (0 FLOPs) + 3 layers; each of F, B, W is 1 s/sample.
    # All frozen but the projectors: encoders F only (1), projectors F+W (2, nothing trainable upstream:
    # no B), LLM layers after the merge F+B (2), embed 0
    proj = mm_model(enc_trainable=False, proj_trainable=True, llm_trainable=False)
    want = 2 * (2 * 1 + 2) + 3 * 2
    assert lower_bound(proj, cluster, 8).gpu_seconds == pytest.approx(8 * want)
    full = mm_model(enc_trainable=True, proj_trainable=True, llm_trainable=True)
    # encoder layer 0: F+W (no B: nothing upstream), the rest F+B+W
    want_full = 2 * (2 + 3 + 3) + 3 * 3
    assert lower_bound(full, cluster, 8).gpu_seconds == pytest.approx(8 * want_full)
    assert lower_bound(full, cluster, 8).seconds == pytest.approx(want_full)


def test_bound_tight_for_pure_dp_without_communication():
    """Unit GPUs, infinite links, no overhead: one stage per GPU with no sync cost meets the bound."""
    model = chain_model(4)
    cluster = unit_cluster(8)
    lb = iteration_lower_bound(model, cluster, 16)
    res = search(model, cluster, 16)
    assert res.sim.iteration_s == pytest.approx(lb, rel=1e-9)


def test_bound_covers_larger_microbatch_only_when_asked():
    model = freeze(preset_model("VLM-small"), "projector_only")
    cluster = ClusterSpec.of(16)
    default = iteration_lower_bound(model, cluster, 96)
    wider = iteration_lower_bound(model, cluster, 96, mb_choices=(1, 2, 4, 8))
    assert 0 < wider <= default


def test_bound_rejects_bad_input():
    with pytest.raises(ValueError):
        lower_bound(chain_model(2), unit_cluster(8), 0)


def test_bound_below_context_parallel_plans():
    """64k-token samples, 4 per step on 16 GPUs: the search picks CP > 1; the bound stays below."""
    from amylum.planner.configs import model_spec_from_configs
    from amylum.planner.presets import LLMS

    model = model_spec_from_configs("llama-8b", LLMS["llama-3.1-8b"], text_tokens=65536)
    cluster = ClusterSpec.of(16)
    res = search(model, cluster, 4)
    assert max(s.cp for s in res.plan.stages) > 1
    lb = iteration_lower_bound(model, cluster, 4)
    assert 0 < lb <= res.sim.iteration_s * (1 + EPS)
    assert lb <= res.sim_1f1b.iteration_s * (1 + EPS)

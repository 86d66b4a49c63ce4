"""The lower bounds are below every plan the search and the baselines produce: the total-work bound
(bounds.py) and the per-shape bound with memory, DP sync and pipeline fill (bounds_memory.py)."""

import itertools
import math
from dataclasses import replace

import pytest

from amylum.planner.baselines import BASELINES, baseline_plan
from amylum.planner.bounds import iteration_lower_bound, lower_bound
from amylum.planner.bounds_memory import shape_lower_bound
from amylum.planner.candidates import ChainOption, build_plan, chain_layers
from amylum.planner.cost import CostModel
from amylum.planner.presets import preset_model
from amylum.planner.search import SearchOptions, rule_candidates, search
from amylum.planner.simulate import simulate
from amylum.planner.spec import FREEZING_SCENARIOS, BranchSpec, ClusterSpec, GPUType, ModelSpec, freeze

from helpers_planner import chain_model, layer, mm_model, unit_cluster

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


def _rule_plans(model, cluster, batch, opts):
    """(1F1B plan, its cost model) for every hand-rule shape of the search × microbatch size × checkpointing."""
    cms = {ck: CostModel(cluster, checkpointing=ck) for ck in (False, True)}
    for placement, chosen, mb in rule_candidates(model, opts, (1, 2, 4, 8), cluster.world_size, batch):
        R = sum(o.gpus for o in chosen)
        dp = min(cluster.world_size // R, max(1, batch // mb))
        m = math.ceil(batch / (dp * mb))
        for ck in (False, True):
            yield build_plan(model, chosen, placement, dp, mb, m, batch, ck, "1f1b"), cms[ck]


def test_bound_below_every_rule_plan_any_schedule():
    """Every hand-rule plan of the search, with each microbatch size, checkpointing and schedule."""
    model = freeze(preset_model("tiny"), "frozen_encoders")
    cluster = ClusterSpec.of(16)
    batch = 16
    lb = iteration_lower_bound(model, cluster, batch)
    n = 0
    for plan, cm in _rule_plans(model, cluster, batch, SearchOptions()):
        for p in (plan, replace(plan, schedule="zb", split_w=True)):
            t = simulate(p, model, cluster, cost_model=cm, validate=False).iteration_s
            assert lb <= t * (1 + EPS), (p, t, lb)
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


# ---- the shape bound (bounds_memory.py): memory, DP sync, padding, bottleneck and fill ------------

def _all_bounds(model, cluster, batch):
    old = iteration_lower_bound(model, cluster, batch)
    new = shape_lower_bound(model, cluster, batch).seconds
    one = shape_lower_bound(model, cluster, batch, inflight="one").seconds
    return old, new, one


@pytest.mark.parametrize("scenario", FREEZING_SCENARIOS)
@pytest.mark.parametrize("gpus", [8, 16])
def test_shape_bound_below_search_and_baselines_tiny(scenario, gpus):
    model = freeze(preset_model("tiny"), scenario)
    cluster = ClusterSpec.of(gpus)
    old, new, one = _all_bounds(model, cluster, 16)
    assert old <= one * (1 + EPS) and one <= new * (1 + EPS)
    for name, t in _plans_checked(model, cluster, 16).items():
        assert new <= t * (1 + EPS), (name, new, t)


@pytest.mark.parametrize("name,scenario,gpus", [
    ("VLM-small", "all_trainable", 16),
    ("ALM-large", "frozen_encoders", 16),  # memory-tight: Megatron-like and Cornstarch do not fit, TP 4 needed
    ("VALM-large", "projector_only", 16),  # 70B LLM + 18B encoder on two nodes: TP 8, dp 1
])
def test_shape_bound_below_search_and_baselines_grid(name, scenario, gpus):
    model = freeze(preset_model(name), scenario)
    cluster = ClusterSpec.of(gpus)
    old, new, one = _all_bounds(model, cluster, 96)
    assert old <= one * (1 + EPS) and one <= new * (1 + EPS)
    times = _plans_checked(model, cluster, 96)
    for plan_name, t in times.items():
        assert new <= t * (1 + EPS), (plan_name, new, t)
    # and it is tight enough to matter: within 10 % of the search's plan, well above the old bound
    assert times["amylum"] <= 1.1 * new
    assert new >= 1.05 * old


def test_shape_bound_none_fits_where_nothing_fits():
    """No shape fits in memory (a 72B LLM + 22B encoder, all trainable, on 16 GPUs: weights, grads
    and optimizer state alone exceed 16 x 80 GB): the bound is infinite, and indeed the search and
    every baseline find nothing."""
    model = freeze(preset_model("VLM-large"), "all_trainable")
    cluster = ClusterSpec.of(16)
    assert shape_lower_bound(model, cluster, 96, inflight="one").seconds == math.inf
    with pytest.raises(ValueError):
        search(model, cluster, 96)
    assert all(baseline_plan(model, cluster, 96, k) is None for k in BASELINES)


def test_shape_bound_below_rule_plans_memory_tight():
    """Every hand-rule plan of a memory-tight cell, with each microbatch size, checkpointing and schedule."""
    model = freeze(preset_model("ALM-large"), "frozen_encoders")
    cluster = ClusterSpec.of(16)
    batch = 16
    lb = shape_lower_bound(model, cluster, batch).seconds
    lb_one = shape_lower_bound(model, cluster, batch, inflight="one").seconds
    fitted = rejected = 0
    for plan, cm in _rule_plans(model, cluster, batch, SearchOptions(llm_pp_choices=(1, 2, 4, 8, 16))):
        base = simulate(plan, model, cluster, cost_model=cm, validate=False)
        for p in (plan, replace(plan, schedule="zb", split_w=True), replace(plan, schedule="gpipe")):
            sim = base if p is plan else simulate(p, model, cluster, cost_model=cm, validate=False)
            if not sim.fits:
                rejected += 1
                continue
            fitted += 1
            assert lb_one <= sim.iteration_s * (1 + EPS), (p.schedule, plan.microbatch_size, sim.iteration_s, lb_one)
            if base.fits:  # its shape fits with 1F1B's in-flight microbatches (GPipe holds more)
                assert lb <= sim.iteration_s * (1 + EPS), (p.schedule, plan.microbatch_size, sim.iteration_s, lb)
    assert fitted > 20 and rejected > 20  # memory decides here


def test_shape_bound_rejects_bad_input():
    with pytest.raises(ValueError):
        shape_lower_bound(chain_model(2), unit_cluster(8), 0)
    with pytest.raises(ValueError):
        shape_lower_bound(chain_model(2), unit_cluster(8), 8, inflight="gpipe")


def test_shape_bound_exact_for_pure_dp_without_communication():
    """Unit GPUs, no memory limit, free links: one stage per GPU meets it, as it meets the old one."""
    model = chain_model(4)
    cluster = unit_cluster(8)
    lb = shape_lower_bound(model, cluster, 16).seconds
    assert lb == pytest.approx(iteration_lower_bound(model, cluster, 16), rel=1e-6)
    assert search(model, cluster, 16).sim.iteration_s == pytest.approx(lb, rel=1e-6)


def test_shape_bound_below_context_parallel_plans():
    from amylum.planner.configs import model_spec_from_configs
    from amylum.planner.presets import LLMS

    model = model_spec_from_configs("llama-8b", LLMS["llama-3.1-8b"], text_tokens=65536)
    cluster = ClusterSpec.of(16)
    res = search(model, cluster, 4)
    assert max(s.cp for s in res.plan.stages) > 1
    lb = shape_lower_bound(model, cluster, 4).seconds
    assert iteration_lower_bound(model, cluster, 4) <= lb <= res.sim.iteration_s * (1 + EPS)
    assert lb <= res.sim_1f1b.iteration_s * (1 + EPS)


# A tiny model and cluster where memory, TP all-reduces, DP sync and transfers all bind: every
# plan of every shape (all splits of every chain) is simulated; none may beat the bound.
def _small_world(memory: float):
    gpu = GPUType("T", 1e9, memory, efficiency=1.0, layer_overhead_s=1e-3)
    return ClusterSpec(2, 4, gpu, intra_node_bw=4e8, inter_node_bw=5e7, p2p_latency_s=1e-4, reserved_bytes=1e6)


def _small_model(enc_trainable: bool, llm_trainable: bool) -> ModelSpec:
    def lay(name, module, trainable, **kw):
        return replace(layer(name, module, fwd=1e8, igrad=1e8, wgrad=1e8, params=1_000_000, act=4e6,
                             trainable=trainable, **kw), hidden=1_000_000, out_bytes=1e6)
    branch = BranchSpec("vision", (lay("vision.encoder.layers.0", "vision.encoder", enc_trainable),
                                   lay("vision.projector", "vision.projector", True)))
    llm = (lay("llm.embed", "llm", llm_trainable, kind="embedding"),) + tuple(
        lay(f"llm.layers.{i}", "llm", llm_trainable) for i in range(3))
    return ModelSpec("small", llm=llm, branches=(branch,))


def _splits(n: int):
    for p in range(1, n + 1):
        for cuts in itertools.combinations(range(1, n), p - 1):
            yield p, (0, *cuts, n)


def _every_plan(model: ModelSpec, world: int):
    """(placement, chain options) of every shape and split, TP 1/2/4 per chain."""
    n_col, n_llm, n_br = len(chain_layers(model, "colocated")), len(model.llm), len(model.branches[0].layers)
    for tp in (1, 2, 4):
        for p, bounds in _splits(n_col):
            if p * tp <= world:
                yield "colocated", [ChainOption("colocated", tp, p, bounds, [])]
        for p, bounds in _splits(n_llm):
            for btp in (1, 2, 4):
                for bp, bb in _splits(n_br):
                    if p * tp + bp * btp <= world:
                        yield "modality_parallel", [ChainOption("vision", btp, bp, bb, []),
                                                    ChainOption("llm", tp, p, bounds, [])]


@pytest.mark.parametrize("enc_trainable,llm_trainable,any_dp", [(True, True, True), (False, True, False),
                                                                  (False, False, False)])
def test_shape_bound_below_brute_force(enc_trainable, llm_trainable, any_dp):
    """With ``any_dp`` also plans with fewer replicas than fit, against the ``wide`` bound."""
    model = _small_model(enc_trainable, llm_trainable)
    cluster = _small_world(60e6)
    batch = 8
    old, lb, lb_one = _all_bounds(model, cluster, batch)
    lb_wide = shape_lower_bound(model, cluster, batch, wide=True).seconds
    assert old <= lb_wide <= lb * (1 + EPS)
    cms = {ck: CostModel(cluster, checkpointing=ck) for ck in (False, True)}
    best = math.inf
    fitted = rejected = 0
    for placement, chosen in _every_plan(model, cluster.world_size):
        R = sum(o.gpus for o in chosen)
        for mb in (1, 2):
            rule = min(cluster.world_size // R, max(1, batch // mb))  # the planners' DP
            for dp in (range(1, cluster.world_size // R + 1) if any_dp else (rule,)):
                m = math.ceil(batch / (dp * mb))
                for ck in (False, True):
                    plan = build_plan(model, chosen, placement, dp, mb, m, batch, ck, "1f1b")
                    base = simulate(plan, model, cluster, cost_model=cms[ck], validate=False)
                    rejected += not base.fits
                    for p in (plan, replace(plan, schedule="zb", split_w=True), replace(plan, schedule="gpipe")):
                        sim = base if p is plan else simulate(p, model, cluster, cost_model=cms[ck], validate=False)
                        if not sim.fits:
                            continue
                        fitted += 1
                        t = sim.iteration_s * (1 + EPS)
                        if dp == rule:
                            assert lb_one <= t, (placement, mb, ck, p.schedule)
                        if base.fits:
                            assert lb_wide <= t, (placement, [(o.tp, o.bounds) for o in chosen], dp, mb, ck)
                            if dp == rule:
                                assert lb <= t, (placement, [(o.tp, o.bounds) for o in chosen], mb, ck, p.schedule)
                                best = min(best, sim.iteration_s)
    assert fitted > 100 and rejected > (100 if llm_trainable else 0)  # memory binds
    assert old <= lb_one <= lb <= best
    assert lb > 1.05 * old  # memory, sync and fill lift it above the total-work bound

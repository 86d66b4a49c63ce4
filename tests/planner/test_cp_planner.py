"""The planner learns context parallelism: cost model, search, plan file and validation."""

from dataclasses import replace

import pytest

from amylum.planner.configs import model_spec_from_configs
from amylum.planner.cost import CostModel, grad_needs
from amylum.planner.cp_cost import cp_imbalance
from amylum.planner.planfile import plan_errors, plan_from_dict, plan_to_dict, read_plan, write_plan
from amylum.planner.presets import LLMS, preset_model
from amylum.planner.search import SearchOptions, llm_cp_choices, search
from amylum.planner.spec import ClusterSpec

from helpers_planner import mm_model, unit_cluster


def _llama(tokens: int):
    return model_spec_from_configs("llama-8b", LLMS["llama-3.1-8b"], text_tokens=tokens)


@pytest.fixture(scope="module")
def long_plan():
    """64k tokens per sample, 4 samples per step on 16 H100s: DP alone cannot use the GPUs."""
    model, cluster = _llama(65536), ClusterSpec.of(16)
    return search(model, cluster, 4), model, cluster


def test_long_sequence_plans_pick_cp_and_beat_the_best_plan_without_it(long_plan):
    res, model, cluster = long_plan
    llm = [s for s in res.plan.stages if s.chain == "llm"]
    assert all(s.cp > 1 for s in llm), [(s.tp, s.cp) for s in llm]
    assert all(len(rep) == s.tp * s.cp for s in llm for rep in s.ranks)
    without = search(model, cluster, 4, SearchOptions(cp_choices=(1,)))
    assert res.sim.iteration_s < without.sim.iteration_s
    assert plan_errors(res.plan, model, cluster) == []  # memory checked by the simulator too


def test_short_sequence_picks_cp_1_on_merit():
    # cp_min_tokens=0: CP degrees are tried and lose to DP (same compute split, no K/V exchange)
    res = search(_llama(2048), ClusterSpec.of(16), 64, SearchOptions(cp_min_tokens=0))
    assert {s.cp for s in res.plan.stages} == {1}
    assert llm_cp_choices(_llama(2048), SearchOptions()) == (1,)  # by default not even tried
    assert llm_cp_choices(_llama(65536), SearchOptions()) == (1, 2, 4, 8)


def test_cp_round_trips_through_the_plan_file(long_plan, tmp_path):
    res, model, cluster = long_plan
    plan2, _, _ = read_plan(write_plan(tmp_path / "cp.json", res.plan, model, cluster))
    assert plan2 == res.plan and max(s.cp for s in plan2.stages) > 1
    d = plan_to_dict(res.plan, model, cluster)
    for s in d["plan"]["stages"]:
        del s["cp"]  # a plan file written before CP existed
    old, _, _ = plan_from_dict(d)
    assert {s.cp for s in old.stages} == {1}


def test_validation_names_bad_cp_degrees_and_rank_counts():
    model, cluster = mm_model(), unit_cluster(8)
    plan = search(model, cluster, 8, SearchOptions(tp_choices=(1,), mb_choices=(1,), llm_pp_choices=(1,),
                                                   branch_pp_max=1, checkpointing=(False,),
                                                   placements=("modality_parallel",), rule_candidates=False)).plan
    enc = next(s for s in plan.stages if s.chain != "llm")
    llm = next(s for s in plan.stages if s.chain == "llm")

    def with_stage(st):
        return replace(plan, stages=tuple(st if s.id == st.id else s for s in plan.stages))

    assert any("cp 3 must be a power of two" in e for e in plan_errors(with_stage(replace(llm, cp=3)), model, cluster, False))
    assert any("without LLM layers" in e for e in plan_errors(with_stage(replace(enc, cp=2)), model, cluster, False))
    errs = plan_errors(with_stage(replace(llm, cp=2)), model, cluster, False)  # ranks still for cp = 1
    assert any("expected 2 (tp 1 x cp 2)" in e for e in errs)


def test_cost_model_splits_llm_work_over_cp_and_adds_the_kv_exchange():
    model = _llama(65536)
    needs = grad_needs(model)
    layer = next(l for l in model.llm if l.kind.endswith(".decoder"))
    cluster = ClusterSpec.of(8)
    even = CostModel(cluster, cp_imbalance={4: 1.0})
    skew = CostModel(cluster, cp_imbalance={4: 1.25})
    f1, b1, w1 = even.layer_times(layer, needs[layer.name], 1, 1)
    f4, b4, w4 = even.layer_times(layer, needs[layer.name], 1, 1, cp=4)
    kv = even.kv_exchange_time(layer, 1, 1, 4)
    ov = cluster.gpu.layer_overhead_s
    assert kv > 0 and even.kv_exchange_time(layer, 1, 1, 1) == 0
    assert f4 == pytest.approx((f1 - ov) / 4 + ov + kv)
    assert w4 == pytest.approx((w1 - ov) / 4 + ov)
    fs, _, _ = skew.layer_times(layer, needs[layer.name], 1, 1, cp=4)
    assert fs - skew.kv_exchange_time(layer, 1, 1, 4) - ov == pytest.approx((f1 - ov) / 4 * 1.25)
    # activations: a quarter of the tokens', plus the other ranks' K/V kept for the backward
    a1, a4 = even.layer_act_bytes(layer, needs[layer.name], 1, 1), even.layer_act_bytes(layer, needs[layer.name], 1, 1, 4)
    assert a4 == pytest.approx(a1 / 4 + 65536 * 3 / 4 * layer.kv_bytes) and layer.kv_bytes == 2 * 8 * 128 * 2
    # encoder layers are not split (they run whole on every CP rank)
    enc = replace(layer, module="vision.encoder")
    assert even.layer_times(enc, needs[layer.name], 1, 1, cp=4) == even.layer_times(enc, needs[layer.name], 1, 1)


def test_cp_imbalance_is_one_for_cp_1_and_near_one_for_balanced_causal_rows():
    table = cp_imbalance(65536, (1, 2, 8))
    assert table[1] == 1.0 and all(1.0 <= v < 1.02 for v in table.values())


@pytest.mark.parametrize("name,tokens", [("llama", 2048), ("llama", 65536), ("VALM-small", 1024),
                                         ("VLM-small", 32768)])
def test_the_llm_option_bound_changes_no_plan(name, tokens):
    model = _llama(tokens) if name == "llama" else preset_model(name, text_tokens=tokens)
    cluster = ClusterSpec.of(64)
    fast = search(model, cluster, 16)
    full = search(model, cluster, 16, SearchOptions(llm_bound=False))
    assert fast.plan == full.plan and fast.sim.iteration_s == full.sim.iteration_s
    assert fast.partitions < full.partitions  # the bound did skip partitions

"""Frozen-aware costs and schedules; the simulator against 1F1B's closed form; the validator."""

import pytest

from amylum.planner.cost import CostModel, grad_needs
from amylum.planner.plan import Plan, StagePlan
from amylum.planner.schedule import Action, StageGraph, build_schedule
from amylum.planner.simulate import simulate, stage_costs, stage_graph
from amylum.planner.validate import ScheduleError, check_schedule, schedule_errors

from helpers_planner import chain_model, mm_model, unit_cluster


def test_projector_only_needs():
    n = grad_needs(mm_model(enc_trainable=False, proj_trainable=True, llm_trainable=False))
    # frozen encoder with nothing trainable upstream: no backward at all
    assert not n["vision.encoder.layers.0"].any and not n["vision.encoder.layers.1"].any
    # trainable projector: weight grads, but nobody upstream wants its input grad
    assert n["vision.projector"].wgrad and not n["vision.projector"].igrad
    # frozen LLM after a trainable projector: input grads only (to reach the projector)
    assert all(n[f"llm.layers.{i}"].igrad and not n[f"llm.layers.{i}"].wgrad for i in range(3))
    assert not n["llm.embed"].any  # token ids have no gradient; the frozen table needs none


def test_all_frozen_upstream_of_trainable_llm():
    n = grad_needs(mm_model(enc_trainable=False, proj_trainable=False, llm_trainable=True))
    assert not any(n[f"{b}.{x}"].any for b in ("vision", "audio")
                   for x in ("encoder.layers.0", "encoder.layers.1", "projector"))
    assert n["llm.embed"].wgrad and not n["llm.embed"].igrad
    assert n["llm.layers.0"].igrad and n["llm.layers.0"].wgrad  # the embedding upstream is trainable


def test_frozen_layer_costs():
    cm = CostModel(unit_cluster())
    m = mm_model()
    needs = grad_needs(m)
    enc = cm.stage_cost(list(m.branches[0].layers[:2]), needs, mb=1, tp=1)
    assert (enc.f, enc.b, enc.w, enc.act_bytes, enc.has_bwd) == (2.0, 0.0, 0.0, 0.0, False)
    proj = cm.stage_cost([m.branches[0].layers[2]], needs, mb=1, tp=1)
    assert (proj.b, proj.w) == (0.0, 1.0)
    llm = cm.stage_cost(list(m.llm[1:]), needs, mb=1, tp=1)
    assert (llm.f, llm.b, llm.w) == (3.0, 3.0, 0.0)
    assert llm.act_bytes == 3 * 5.0  # input-grad-only activations (half in this spec)
    # weights, no grads or optimizer state for frozen layers: 2 bytes per param
    assert llm.static_bytes == 3 * 1000 * 2
    assert proj.static_bytes == 1000 * (2 + 4 + 12)


def _chain_plan(p, m, layers_per_stage=1, split_w=False, schedule="1f1b"):
    # no input-gradient work anywhere, so the first stage (which needs none) is like the others
    model = chain_model(p * layers_per_stage, igrad=0)
    stages = tuple(StagePlan(i, "llm", tuple(f"llm.layers.{j}" for j in range(i * layers_per_stage,
                                                                               (i + 1) * layers_per_stage)),
                             1, (i - 1,) if i else (), ((i,),)) for i in range(p))
    plan = Plan("chain", "modality_parallel", 1, 1, m, m, stages, schedule=schedule, split_w=split_w, world_size=p)
    return plan, model


@pytest.mark.parametrize("p,m", [(1, 1), (2, 4), (4, 8), (4, 3), (3, 12)])
def test_1f1b_matches_closed_form(p, m):
    plan, model = _chain_plan(p, m, layers_per_stage=2)
    sim = simulate(plan, model, unit_cluster(max(8, p)))
    f, b = 2.0, 2.0  # two layers per stage: forward 1 s and weight-gradient 1 s each
    assert sim.iteration_s == pytest.approx((m + p - 1) * (f + b))
    assert sim.bubble_fraction == pytest.approx((p - 1) / (m + p - 1))
    # 1F1B keeps at most p - s microbatches alive on stage s
    assert all(sim.trace.max_inflight[s] == min(m, p - s) for s in range(p))


def test_gpipe_holds_all_microbatches():
    plan, model = _chain_plan(3, 5, schedule="gpipe")
    sim = simulate(plan, model, unit_cluster())
    assert sim.iteration_s == pytest.approx((5 + 3 - 1) * (1 + 1))
    assert all(v == 5 for v in sim.trace.max_inflight.values())


def _mm_plan(m=4):
    model = mm_model()
    st = [StagePlan(0, "vision", ("vision.encoder.layers.0", "vision.encoder.layers.1", "vision.projector"), 1, (),
                    ((0,),)),
          StagePlan(1, "audio", ("audio.encoder.layers.0", "audio.encoder.layers.1"), 1, (), ((1,),)),
          StagePlan(2, "audio", ("audio.projector",), 1, (1,), ((2,),)),
          StagePlan(3, "llm", ("llm.embed", "llm.layers.0", "llm.layers.1"), 1, (0, 2), ((3,),)),
          StagePlan(4, "llm", ("llm.layers.2",), 1, (3,), ((4,),))]
    return Plan("mm", "modality_parallel", 1, 1, m, m, tuple(st), world_size=5), model


def test_dag_schedule_prunes_frozen_backward():
    plan, model = _mm_plan()
    cm = CostModel(unit_cluster())
    g = stage_graph(plan, stage_costs(plan, model, cm))
    sched = build_schedule(g, 4)
    check_schedule(sched, 4)
    ops = {s: {a.op for a in acts} for s, acts in sched.items()}
    assert ops[1] == {"F", "SEND"}  # frozen audio encoder: forward only, never receives gradients
    assert "B" in ops[2] and "B" in ops[0]  # projectors compute weight grads
    sends_to_1 = [a for a in sched[2] if a.op == "SEND" and a.peer == 1]
    assert all(a.data == "act" for a in sends_to_1) and not sends_to_1  # stage 2 only sends downstream
    # the LLM's first stage receives both branches and sends gradients back to both
    assert {(a.peer, a.data) for a in sched[3] if a.op in ("RECV", "SEND")} >= {(0, "act"), (2, "act"),
                                                                               (0, "grad"), (2, "grad")}
    sim = simulate(plan, model, unit_cluster())
    assert sim.busy_s[1] == pytest.approx(4 * 2.0)  # 4 forwards of 2 frozen layers, nothing else


def test_validator_catches_planted_deadlock():
    g = StageGraph({0: (), 1: (0,)}, {0: True, 1: True}, {0: True, 1: True})
    sched = build_schedule(g, 2)
    assert schedule_errors(sched, 2) == []
    # stage 0 waits for microbatch 0's gradient before it has sent microbatch 0 forward
    bad = dict(sched)
    acts = list(bad[0])
    recv = next(a for a in acts if a.op == "RECV" and a.data == "grad" and a.mb == 0)
    acts.remove(recv)
    bad[0] = [recv] + acts
    errs = schedule_errors(bad, 2)
    assert len(errs) == 1 and errs[0].startswith("deadlock") and "stage 0 waits on RECV(grad mb0 <- s1)" in errs[0]
    with pytest.raises(ScheduleError, match="deadlock"):
        check_schedule(bad, 2)


def test_validator_catches_unmatched_and_order():
    sched = {0: [Action("F", 0, 0), Action("SEND", 0, 0, 1, "act")],
             1: [Action("B", 1, 0), Action("RECV", 1, 0, 0, "act"), Action("F", 1, 0),
                 Action("RECV", 1, 1, 0, "act")]}
    errs = schedule_errors(sched)
    assert any("B of microbatch 0 comes before its F" in e for e in errs)
    assert any("RECVs act of microbatch 1 from stage 0, which never SENDs it" in e for e in errs)


def test_frozen_stage_between_trainable_and_llm_relays_gradients():
    # colocated chain: [vision encoder + trainable projector] -> [frozen audio encoder] -> [LLM]
    model = mm_model()
    chain = [l.name for b in model.branches for l in b.layers] + [l.name for l in model.llm]
    st = (StagePlan(0, "colocated", tuple(chain[:3]), 1, (), ((0,),)),
          StagePlan(1, "colocated", tuple(chain[3:5]), 1, (0,), ((1,),)),
          StagePlan(2, "colocated", tuple(chain[5:]), 1, (1,), ((2,),)))
    plan = Plan("mm", "colocated", 1, 1, 3, 3, st, world_size=3)
    costs = stage_costs(plan, model, CostModel(unit_cluster()))
    assert not costs[1].has_bwd  # nothing of its own to differentiate ...
    g = stage_graph(plan, costs)
    assert g.has_bwd[1]  # ... but it must pass the projector's gradient back
    check_schedule(build_schedule(g, 3), 3)
    sim = simulate(plan, model, unit_cluster())
    assert sim.busy_s[1] == pytest.approx(3 * 2.0)  # relaying costs nothing: forwards only

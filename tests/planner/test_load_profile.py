"""Pipeline load profiles: the LP agrees with the replay, beats even microbatches, and the
hierarchical policy meets a profile while still partitioning the global batch."""

import numpy as np
import pytest

from amylum.planner import microbatch as mb
from amylum.planner.load_profile import pipeline_load_profile, profile_from_plan
from amylum.planner.replay import replay
from amylum.planner.schedule import StageGraph, build_schedule
from amylum.planner.workload import WorkTable

M = 8


def chain(stages: int, frozen_first: bool = False):
    g = StageGraph({s: (s - 1,) if s else () for s in range(stages)},
                   {s: not (frozen_first and s == 0) for s in range(stages)},
                   {s: not (frozen_first and s == 0) for s in range(stages)})
    return build_schedule(g, M)


def op_time(s, op):  # (fixed, scaled): B twice F, stage 2 a little slower
    f = 1.0 + 0.2 * (s == 2)
    return (0.01, f) if op == "F" else (0.01, 2 * f)


def xfer(s, peer, data):
    return (0.005, 0.05)


def fluid_replay(sched, shares, stage_column=None):
    """Replay with every action's duration at its microbatch's share: what the LP models."""
    col = stage_column or {s: 0 for s in sched}
    queues = {s: iter([op_time(s, a.op)[0] + op_time(s, a.op)[1] * shares[a.mb, col[s]]
                       for a in acts if a.op in ("F", "B", "W")]) for s, acts in sched.items()}
    xq = {s: iter([xfer(s, a.peer, a.data)[0] + xfer(s, a.peer, a.data)[1]
                   * shares[a.mb, col[a.peer] if a.data == "grad" else col[s]]
                   for a in acts if a.op == "SEND"]) for s, acts in sched.items()}
    tr = replay(sched, lambda s, op: next(queues[s]), lambda s, p, d: next(xq[s]))
    assert tr.ok
    return max(tr.end.values())


@pytest.mark.parametrize("stages", [2, 4, 5])
def test_profile_lightens_fill_and_drain_and_beats_even_microbatches(stages):
    sched = chain(stages)
    p = pipeline_load_profile(sched, op_time, xfer, {s: 0 for s in sched}, 1, M)
    assert p.shape == (M, 1) and p.mean() == pytest.approx(1.0)
    assert p.min() >= 0.25 - 1e-9 and p.max() <= 1.5 + 1e-9
    assert p[0, 0] < 1 and p[-1, 0] < 1 and p[:, 0].max() > 1  # light ends, heavier middle
    flat, shaped = fluid_replay(sched, np.ones((M, 1))), fluid_replay(sched, p)
    assert shaped < 0.97 * flat, (shaped, flat)


def test_no_nearby_profile_replays_faster_than_the_lp_optimum():
    sched = chain(4, frozen_first=True)
    cols = {0: 0, 1: 1, 2: 1, 3: 1}  # a frozen encoder stage, then the LLM's
    p = pipeline_load_profile(sched, op_time, xfer, cols, 2, M, tolerance=0.0)
    # no profile in a small neighbourhood does better in the replay (the LP is exact for the fluid model)
    best = fluid_replay(sched, p, cols)
    rng = np.random.default_rng(0)
    for _ in range(20):
        q = np.clip(p + rng.normal(0, 0.05, p.shape), 0.25, 1.5)
        q = q / q.mean(axis=0)
        if q.min() >= 0.25 and q.max() <= 1.5:
            assert fluid_replay(sched, q, cols) >= best - 1e-9


def test_one_stage_has_nothing_to_shape():
    sched = chain(1)
    p = pipeline_load_profile(sched, op_time, xfer, {0: 0}, 2, M)
    assert np.allclose(p, 1.0)  # the flattest of the equally fast profiles; column 1 unused: flat


def test_bad_profile_inputs():
    sched = chain(2)
    with pytest.raises(ValueError, match="stage_column"):
        pipeline_load_profile(sched, op_time, xfer, {0: 0}, 1, M)
    with pytest.raises(ValueError, match="min_share"):
        pipeline_load_profile(sched, op_time, xfer, {0: 0, 1: 0}, 1, M, min_share=2.0)


def test_profile_from_a_planner_plan():
    from amylum.planner.search import SearchOptions, search
    from amylum.planner.presets import preset_model
    from amylum.planner.spec import ClusterSpec

    model = preset_model("tiny")
    opts = SearchOptions(tp_choices=(1,), mb_choices=(1,), llm_pp_choices=(2,), branch_pp_max=1,
                         placements=("modality_parallel",), zero_bubble=False, simulate_top=2)
    plan = search(model, ClusterSpec.of(4), 16, opts).plan
    p = profile_from_plan(plan, model, ClusterSpec.of(4), M, ("vision", "audio", "llm"))
    assert p.shape == (M, 3) and np.allclose(p.mean(axis=0), 1.0)
    assert np.allclose(p[:, 0], p[:, 2])  # tied: one share per microbatch for every column


def table(n=1200, seed=0):
    rng = np.random.default_rng(seed)
    imgs = rng.choice(6, n, p=[.25, .45, .15, .08, .05, .02])
    text = np.clip(np.exp(rng.normal(5.5, 1, n)), 32, 2048)
    L = text + imgs * 576
    return WorkTable.from_arrays(imgs[:, None] * 4e-3, 1e-4 * L + 2e-9 * L * L, L, ("vision",))


def test_hierarchical_meets_a_profile_and_still_partitions():
    t = table()
    sched = chain(4)
    shares = pipeline_load_profile(sched, op_time, xfer, {s: 0 for s in sched}, 1, M)
    profile = np.repeat(shares, 2, axis=1)
    a = mb.hierarchical(t, 3, M, profile=profile)
    mb.check_assignment(a, len(t), 3, M)
    dev = mb.profile_deviation(t, a, profile)
    flat = mb.hierarchical(t, 3, M)
    assert dev["encoder"] < 0.05 and dev["llm"] < 0.02, dev
    assert mb.profile_deviation(t, flat, profile)["llm"] > 5 * dev["llm"]  # the flat split does not meet it
    loads = mb.microbatch_loads(t, a)[..., -1]
    assert (loads[:, 0] < loads[:, M // 2]).all()  # microbatch 0 fills the pipeline: light


def test_profile_on_adversarial_batches():
    profile = np.linspace(0.5, 1.5, M)
    giant = table(400)
    llm = giant.llm.copy()
    llm[3] = llm.sum()
    g = WorkTable(giant.encoder, llm, giant.tokens, giant.modalities)
    text = WorkTable.from_arrays(np.zeros((300, 1)), np.linspace(1, 3, 300), np.arange(300.0), ("vision",))
    for t in (g, text):
        a = mb.hierarchical(t, 2, M, profile=profile)
        mb.check_assignment(a, len(t), 2, M)
        assert all(len(idx) for mbs in a for idx in mbs)
    assert mb.profile_deviation(text, mb.hierarchical(text, 2, M, profile=profile), profile)["llm"] < 0.01


def test_bad_profiles():
    t = table(200)
    with pytest.raises(ValueError, match="shape"):
        mb.hierarchical(t, 2, M, profile=np.ones(M + 1))
    with pytest.raises(ValueError, match="> 0"):
        mb.hierarchical(t, 2, M, profile=np.r_[np.zeros(1), np.ones(M - 1)])

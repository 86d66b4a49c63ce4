"""Instantiation: exact makespan distribution and mix choice, coverage with ≥ f+1 pipelines, re-planning."""

import itertools
import math
import random

import pytest

from amylum.planner.instantiate import (ReplicaLostError, coverage_gaps, distribute, enumerate_mixes,
                                        fastest_mix, instantiate, replan, template_cost)
from amylum.planner.templates import LayerCost, NodeSpec, generate_templates, pipeline_templates


def brute_distribution(costs, B):
    best = None
    for cuts in itertools.combinations(range(1, B), len(costs) - 1):
        b = [e - s for s, e in zip((0,) + cuts, cuts + (B,))]
        T = max(fx + bj * per for (fx, per), bj in zip(costs, b))
        best = T if best is None else min(best, T)
    return best


@pytest.mark.parametrize("seed", range(3))
def test_distribution_equals_brute_force(seed):
    rng = random.Random(seed)
    for _ in range(80):
        p = rng.randint(1, 4)
        costs = [(rng.uniform(0, 10), rng.uniform(0.1, 3)) for _ in range(p)]
        B = rng.randint(p, 14)
        b, T = distribute(costs, B)
        assert sum(b) == B and min(b) >= 1
        assert math.isclose(T, brute_distribution(costs, B), rel_tol=1e-12)


def test_distribution_needs_one_microbatch_each():
    with pytest.raises(ValueError, match="3 microbatches cannot give each of 4 pipelines"):
        distribute([(0.0, 1.0)] * 4, 3)


@pytest.mark.parametrize("seed", range(3))
def test_fastest_mix_equals_enumeration(seed):
    rng = random.Random(seed)
    for _ in range(100):
        sizes = sorted(rng.sample(range(1, 8), rng.randint(1, 5)))
        costs = {s: (rng.uniform(0, 5), rng.uniform(0.1, 2) / s) for s in sizes}
        N, f = rng.randint(1, 16), rng.randint(0, 3)
        B = rng.randint(f + 1, 20)
        best = None
        for mix in enumerate_mixes(sizes, N, f + 1, B):
            _, T = distribute([costs[s] for s in mix for _ in range(mix[s])], B)
            best = T if best is None else min(best, T)
        if best is None:
            with pytest.raises(ValueError, match="no mix"):
                fastest_mix(costs, N, f, B)
            continue
        mix, T = fastest_mix(costs, N, f, B)
        assert sum(s * x for s, x in mix.items()) == N and sum(mix.values()) >= f + 1
        assert math.isclose(T, best, rel_tol=1e-12)


def test_f_plus_one_enforced():
    # one 4-node pipeline is much faster than two 2-node ones, but f=1 needs 2 pipelines
    costs = {2: (1.0, 1.0), 4: (0.1, 0.1)}
    assert fastest_mix(costs, 4, 0, 8)[0] == {4: 1}
    assert fastest_mix(costs, 4, 1, 8)[0] == {2: 2}


def small_set(N, f):
    layers = [LayerCost(f"l{i}", 1.0 + 0.1 * (i % 3), 2.0, 3.0, 3.0, 9.0, 0.2, 1.0) for i in range(24)]
    node = NodeSpec(2, 100.0, intra_bw=20.0, inter_bw=2.0)
    return pipeline_templates(layers, node, total_nodes=N, f=f, microbatches=8)


@pytest.mark.parametrize("N,f", [(12, 1), (16, 2), (20, 3), (9, 3)])
def test_coverage_every_node_count(N, f):
    """For every surviving count in [(f+1)·n0, N] a mix uses all nodes with ≥ f+1 pipelines."""
    ts = small_set(N, f)
    lo = (f + 1) * ts.n0
    assert coverage_gaps(ts.sizes(), lo, N, f + 1) == []
    for n in range(lo, N + 1):
        inst = instantiate(ts, n, f, 64)
        assert sorted(inst.node_ids) == list(range(n))
        assert len(inst.pipelines) >= f + 1
        assert sum(p.microbatches for p in inst.pipelines) == 64
    with pytest.raises(ValueError, match=rf"f={f} needs at least \(f\+1\)·n0 = {lo} nodes, have {lo - 1}"):
        instantiate(ts, lo - 1, f, 64)


def test_coverage_gap_detected():
    assert coverage_gaps([3], 6, 8, 2) == [7, 8]


def test_replan_after_failure_and_rejoin():
    ts = small_set(12, 1)
    inst = instantiate(ts, 12, 1, 64)
    victim = inst.pipelines[0].node_ids[0]
    alive = [n for n in inst.node_ids if n != victim]
    rec = replan(ts, inst, alive)
    assert rec.lost == (victim,) and rec.joined == ()
    assert sorted(rec.instance.node_ids) == sorted(alive)
    assert sum(p.microbatches for p in rec.instance.pipelines) == 64  # global batch kept
    assert len(rec.instance.pipelines) >= 2
    assert rec.kept_pipelines >= len(inst.pipelines) - 1 or rec.copy_bytes > 0
    assert rec.copy_bytes > 0 and rec.copy_time_s > 0
    back = replan(ts, rec.instance, alive + [victim])  # the node returns
    assert back.joined == (victim,) and sorted(back.instance.node_ids) == sorted(inst.node_ids)
    assert math.isclose(back.instance.makespan_s, inst.makespan_s)


def test_losing_every_replica_of_a_layer_is_reported():
    ts = small_set(12, 1)
    inst = instantiate(ts, 12, 1, 64)
    # the node holding layer 0 in every pipeline
    firsts = [p.node_ids[0] for p in inst.pipelines]
    alive = [n for n in inst.node_ids if n not in firsts]
    with pytest.raises(ReplicaLostError, match="no surviving replica.*resume from the last disk checkpoint"):
        replan(ts, inst, alive)


def test_template_cost_matches_iteration_time():
    ts = small_set(12, 1)
    for t in ts.templates.values():
        fx, per = template_cost(t)
        assert math.isclose(fx + 5 * per, t.iteration_time(5))

"""Pipeline templates: exact against brute force, memory-checked, range [n0, N − f·n0]."""

import math
import random

import pytest

from amylum.planner.templates import (LayerCost, NodeSpec, brute_force_template, generate_templates,
                                      layer_costs_from_spec, pipeline_templates, pipeline_time,
                                      stage_memory)


def rand_layers(L, rng, mem=1.0, out_choices=(1.0, 2.0, 5.0)):
    return [LayerCost(f"l{i}", rng.uniform(1, 3), rng.uniform(2, 6), rng.uniform(1, 4) * mem,
                      rng.uniform(0, 2) * mem, rng.uniform(0, 6) * mem, rng.uniform(0, 1) * mem,
                      rng.choice(out_choices)) for i in range(L)]


def rand_node(rng, G):
    return NodeSpec(G, rng.uniform(15, 60), intra_bw=rng.uniform(5, 50), inter_bw=rng.uniform(1, 5),
                    p2p_latency_s=rng.uniform(0, 0.2))


def objective(t, m):
    return pipeline_time([s.time_s for s in t.stages], m)


@pytest.mark.parametrize("seed", range(4))
def test_equals_brute_force(seed):
    """Same optimum (and same feasibility) as enumerating every width and every cut."""
    rng = random.Random(seed)
    checked = 0
    for _ in range(60):
        L, G = rng.randint(3, 9), rng.choice([1, 2, 4])
        layers, node, m = rand_layers(L, rng), rand_node(rng, G), rng.choice([1, 2, 4, 8])
        for n in range(1, 4):
            bf = brute_force_template(layers, node, n, m)
            try:
                t = generate_templates(layers, node, n, m, min_nodes=n).templates.get(n)
            except ValueError:
                t = None
            assert (bf is None) == (t is None), (seed, n, bf)
            if bf is not None:
                assert math.isclose(objective(t, m), bf[0], rel_tol=1e-9), (seed, n, t.bounds(), bf)
                checked += 1
    assert checked > 100


def test_transfer_tradeoff_uses_capped_search(monkeypatch):
    """Where the least-bottleneck split sends more than needed, the capped search runs and still
    finds the brute-force optimum."""
    import amylum.planner.templates as T

    capped = []
    orig = T._Width.sweep

    def counting(self, rmax, mode, cap=float("inf")):
        if cap < float("inf"):
            capped.append(cap)
        return orig(self, rmax, mode, cap)

    monkeypatch.setattr(T._Width, "sweep", counting)
    rng = random.Random(11)
    for _ in range(40):
        layers = rand_layers(7, rng, out_choices=(0.1, 30.0))
        node = NodeSpec(2, 1e9, intra_bw=10.0, inter_bw=0.2)
        for m in (2, 5):
            bf = brute_force_template(layers, node, 2, m)
            t = generate_templates(layers, node, 2, m, min_nodes=2).templates[2]
            assert math.isclose(objective(t, m), bf[0], rel_tol=1e-9)
    assert len(capped) > 20


def test_memory_checked_and_n0():
    # 8 identical layers of 10 state bytes, 16 usable bytes per GPU, 1 GPU per node: a stage holds
    # at most one layer (plus activations), so n0 = 8 nodes.
    layers = [LayerCost(f"l{i}", 1.0, 2.0, 2.0, 2.0, 6.0, act_bytes=0.5) for i in range(8)]
    node = NodeSpec(1, 16.0, intra_bw=10.0, inter_bw=1.0)
    ts = generate_templates(layers, node, 8, 4)
    assert ts.n0 == 8
    t = ts[8]
    for i, s in enumerate(t.stages):
        assert s.memory_bytes <= node.usable_bytes
        assert s.memory_bytes == stage_memory(layers, node, s.first, s.end, 1, t.num_stages - i)


def test_too_big_model_has_clear_error():
    layers = [LayerCost("l0", 1.0, 1.0, 100.0)]
    with pytest.raises(ValueError, match="holds the 1-layer model"):
        generate_templates(layers, NodeSpec(2, 10.0, 1.0, 1.0), 4, 2)


def test_range_is_n0_to_N_minus_f_n0():
    rng = random.Random(3)
    layers = [LayerCost(f"l{i}", 1.0, 2.0, 3.0, 3.0, 9.0, 0.2, 1.0) for i in range(24)]
    node = NodeSpec(2, 100.0, intra_bw=20.0, inter_bw=2.0)
    ts = pipeline_templates(layers, node, total_nodes=12, f=2, microbatches=8)
    assert ts.n0 == 2
    assert ts.sizes() == list(range(2, 12 - 2 * 2 + 1))
    with pytest.raises(ValueError, match=r"f=5 needs at least \(f\+1\)·n0 = 12 nodes \(n0 = 2\), have 10"):
        pipeline_templates(layers, node, total_nodes=10, f=5, microbatches=8)
    del rng


def test_iteration_time_exact_for_any_count():
    layers = [LayerCost(f"l{i}", 1.0 + i, 2.0, 1.0, out_bytes=1.0) for i in range(6)]
    node = NodeSpec(2, 100.0, intra_bw=10.0, inter_bw=1.0)
    t = generate_templates(layers, node, 2, 8)[2]
    for b in (1, 3, 17):
        assert math.isclose(t.iteration_time(b), objective(t, b) + t.sync_s)


def test_adapter_from_model_spec():
    from amylum.planner.presets import preset_model
    from amylum.planner.spec import ClusterSpec

    model = preset_model("tiny")
    layers, node = layer_costs_from_spec(model, ClusterSpec.of(8, "H100", gpus_per_node=4), 2)
    assert len(layers) == len(model.all_layers())
    ts = generate_templates(layers, node, 2, 8)
    assert ts.n0 == 1 and set(ts.sizes()) == {1, 2}

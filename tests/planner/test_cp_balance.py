"""CP token-assignment policies: coverage, ordering of the policies, exactness on small cases."""

import itertools

import numpy as np
import pytest
import torch

from amylum.attention import dense_mask, mask_spec
from amylum.attention.synthetic import multimodal_batch, random_multimodal_batch
from amylum.planner.cp_balance import (
    POLICIES,
    CPAssignment,
    CPWorkModel,
    assign_blocks,
    block_entries,
    effective_block_size,
    exact_blocks,
    flat_intervals,
    lpt_blocks,
    plan_cp,
    rank_work,
    refine_blocks,
    zigzag_blocks,
)

LAYER = CPWorkModel(1.0, 2.0, 300.0, 600.0)


def _random_specs(n=6, seq=700, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [mask_spec(random_multimodal_batch(g, 2, seq, max_segment=90)) for _ in range(n)]


def _loads(weights, ranks):
    return [float(np.asarray(weights)[r].sum()) for r in ranks]


@pytest.mark.parametrize("policy", POLICIES)
@pytest.mark.parametrize("cp", [1, 2, 3, 8])
def test_every_token_assigned_exactly_once(policy, cp):
    for spec in _random_specs(3, seed=cp):
        a = plan_cp(spec, cp=cp, policy=policy, block_size=32, model=LAYER)
        owner = np.full(a.seq_len, -1)
        for r in range(cp):
            idx = a.token_indices(r)
            assert np.all(np.diff(idx) > 0), "a rank's tokens come in sequence order"
            assert np.all(owner[idx] == -1)
            owner[idx] = r
        assert a.seq_len == 2 * 700 and np.all(owner >= 0)
        assert sum(a.token_counts()) == a.seq_len


def test_short_sequences_shrink_blocks_so_every_rank_gets_tokens():
    assert effective_block_size(5, 4, 128) == 1
    assert effective_block_size(1000, 4, 128) == 128
    spec = mask_spec(multimodal_batch(300, [(300, 0)], image_tokens=1))
    for policy in POLICIES:
        a = plan_cp(spec, cp=4, policy=policy, block_size=128)
        assert min(a.token_counts()) > 0 and a.block_size == 75
    tiny = plan_cp(np.arange(3) * 0, np.arange(3), cp=4, policy="balanced")
    assert sorted(tiny.token_counts()) == [0, 1, 1, 1]


def test_block_entries_match_the_dense_mask():
    for spec in _random_specs(3):
        lo, hi = flat_intervals(spec)
        dense = dense_mask(spec, spec.mode)  # (B, S, S); a MaskSpec carries sample and segment ids
        per_query = dense.reshape(-1, dense.shape[-1]).sum(-1).numpy()
        # padding queries see only themselves; every other row is exactly its interval
        assert np.array_equal(per_query, hi - lo + 1)
        assert np.allclose(block_entries(lo, hi, 50), np.add.reduceat(per_query, np.arange(0, lo.size, 50)))


def test_zigzag_pairs_chunks_from_both_ends():
    assert zigzag_blocks(8, 2) == [[0, 1, 6, 7], [2, 3, 4, 5]]
    assert zigzag_blocks(8, 4) == [[0, 7], [1, 6], [2, 5], [3, 4]]


def test_makespan_beats_uniform_and_refinement_never_loses_to_lpt():
    g = np.random.default_rng(0)
    for spec in _random_specs(6, seq=2000, seed=3):
        for cp in (2, 4, 8):
            works = {p: rank_work(plan_cp(spec, cp=cp, policy=p, block_size=64, model=LAYER), spec, model=LAYER)
                     for p in ("uniform", "makespan", "balanced")}
            assert works["makespan"].makespan <= works["uniform"].makespan * (1 + 1e-9)
            assert works["balanced"].makespan <= works["makespan"].makespan * (1 + 1e-9)
    for _ in range(200):  # random weights, including heavy-tailed ones
        w = g.pareto(1.5, size=int(g.integers(2, 60))) + 0.01
        cp = int(g.integers(2, 9))
        lpt = lpt_blocks(w, cp)
        refined = refine_blocks(w, lpt)
        assert sorted(b for r in refined for b in r) == list(range(len(w)))
        assert max(_loads(w, refined)) <= max(_loads(w, lpt)) * (1 + 1e-12)


def _brute(w, cp):
    best = float("inf")
    for owners in itertools.product(range(cp), repeat=len(w)):
        loads = [0.0] * cp
        for b, r in enumerate(owners):
            loads[r] += w[b]
        best = min(best, max(loads))
    return best


def test_exact_matches_brute_force_on_small_cases():
    g = np.random.default_rng(1)
    for _ in range(40):
        n, cp = int(g.integers(1, 8)), int(g.integers(2, 4))
        w = g.integers(1, 30, size=n).astype(float)
        ranks, proven = exact_blocks(w, cp)
        assert proven
        assert max(_loads(w, ranks)) == pytest.approx(_brute(w, cp))
        assert sorted(b for r in ranks for b in r) == list(range(n))
    # the classic case where LPT is suboptimal: 5,5,4,4,3,3,3 on 3 ranks (LPT 11, optimal 9)
    w = np.array([5, 5, 4, 4, 3, 3, 3], dtype=float)
    assert max(_loads(w, lpt_blocks(w, 3))) == 11
    assert max(_loads(w, assign_blocks(w, 3, "balanced"))) == 9


def test_layer_weighting_changes_the_answer_when_token_counts_differ():
    # One long text run after a large bidirectional image: attention-only LPT evens entries but
    # gives ranks very different token counts; the whole-layer model pays for them.
    spec = mask_spec(multimodal_batch(4096, [(4096, 2)], image_tokens=1536))
    heavy_linear = CPWorkModel(1.0, 2.0, 3000.0, 6000.0)
    attn_only = rank_work(plan_cp(spec, cp=8, policy="makespan_attn", block_size=128), spec, model=heavy_linear)
    layer = rank_work(plan_cp(spec, cp=8, policy="balanced", block_size=128, model=heavy_linear), spec, model=heavy_linear)
    assert layer.imbalance <= attn_only.imbalance
    assert layer.imbalance < 1.05


def test_rank_work_report():
    spec = _random_specs(1, seq=1500)[0]
    lo, hi = flat_intervals(spec)
    for policy in POLICIES:
        a = plan_cp(spec, cp=4, policy=policy, block_size=64, model=LAYER)
        w = rank_work(a, spec, model=LAYER, kv_bytes_per_token=10.0)
        assert sum(w.attn_entries) == float((hi - lo + 1).sum())
        assert sum(w.tokens) == a.seq_len
        for r in range(4):
            assert w.kv_bytes_sparse[r] <= w.kv_bytes_allgather[r]
            assert w.kv_peak_sparse[r] <= w.kv_peak_allgather[r] == a.seq_len * 10.0
        assert w.imbalance >= 1.0


def test_assignment_validation_and_round_trip():
    a = CPAssignment(10, 4, ((0, 2), (1,)), "x")
    assert CPAssignment.from_dict(a.to_dict()) == a
    assert a.token_counts() == [6, 4]
    with pytest.raises(ValueError, match="exactly once"):
        CPAssignment(10, 4, ((0, 1), (1,)))
    with pytest.raises(ValueError, match="unknown CP policy"):
        plan_cp(np.zeros(4, dtype=int), np.arange(4), cp=2, policy="ring")
    with pytest.raises(ValueError, match="non-empty key interval"):
        plan_cp(np.array([1, 0]), np.array([0, 1]), cp=2)


def test_work_model_from_shape():
    m = CPWorkModel.from_shape(hidden=4096, heads=32, kv_heads=8, ffn=14336)
    assert m.attn_entry_bwd == pytest.approx(2 * m.attn_entry_fwd)
    assert m.token_bwd == pytest.approx(2 * m.token_fwd)
    frozen = CPWorkModel.from_shape(hidden=4096, heads=32, kv_heads=8, ffn=14336, trainable=False)
    assert frozen.token_bwd == pytest.approx(m.token_fwd)


def test_contiguous_is_the_best_contiguous_split():
    g = np.random.default_rng(2)
    for _ in range(100):
        n, cp = int(g.integers(1, 9)), int(g.integers(1, 5))
        w = g.integers(1, 20, size=n).astype(float)
        ranks = assign_blocks(w, cp, "contiguous")
        assert len(ranks) == cp and sorted(b for r in ranks for b in r) == list(range(n))
        assert all(r == list(range(r[0], r[-1] + 1)) for r in ranks if r)
        k = min(n, cp)
        best = min(max(w[c[i]:c[i + 1]].sum() for i in range(k))
                   for cuts in itertools.combinations(range(1, n), k - 1) for c in [[0, *cuts, n]])
        assert max(_loads(w, ranks)) == pytest.approx(best)
        assert n < cp or all(ranks)


def test_block_tiles_match_the_runtime_block_mask_per_rank():
    """The planner's tile counts (the GPU kernel fit's regressors) equal what the runtime's
    rectangular block mask gives each rank's queries against the whole sequence."""
    from amylum.parallel.cp_attention import rect_tile_tables
    from amylum.planner.cp_blocks import block_tiles

    for spec in _random_specs(n=3, seq=700, seed=3):
        lo, hi = flat_intervals(spec)  # 1,400 tokens: the last block is short
        partial, full = block_tiles(lo, hi, 128, 128)
        a = plan_cp(lo, hi, cp=4, policy="balanced")
        for r in range(4):
            idx = a.token_indices(r)
            p, f = rect_tile_tables(torch.as_tensor(lo[idx]), torch.as_tensor(hi[idx]), lo.size, 128, 128)
            assert partial[list(a.blocks[r])].sum() == p.sum().item()
            assert full[list(a.blocks[r])].sum() == f.sum().item()


def test_kernel_fit_costs_tiles_and_round_trips(tmp_path):
    from amylum.planner.cp_balance import AttentionKernelFit
    from amylum.planner.cp_blocks import block_tiles

    spec = _random_specs(n=1, seq=700, seed=4)[0]
    lo, hi = flat_intervals(spec)
    fit = AttentionKernelFit(partial_tile=3.0, full_tile=1.0, query_tile=5.0, rank_overhead=100.0, key_tile=0.5,
                             device="test")
    fit.save(tmp_path / "fit.json")
    assert AttentionKernelFit.load(tmp_path / "fit.json") == fit
    model = CPWorkModel(0.0, 0.0, 0.0, 0.0).with_kernel_fit(fit)
    assert model.tiled and not CPWorkModel().tiled
    a = plan_cp(lo, hi, cp=3, policy="balanced", model=model)
    partial, full = block_tiles(lo, hi, 128, 128)
    work = rank_work(a, lo, hi, model=model, traffic=False)
    for r, blocks in enumerate(a.blocks):
        b = list(blocks)
        assert work.compute[r] == pytest.approx(3.0 * partial[b].sum() + full[b].sum() + 5.0 * len(b) + 100.0
                                                  + 0.5 * -(-lo.size // 128))
    (tmp_path / "bad.json").write_text('{"partial_tile": 1, "bogus": 2}')
    with pytest.raises(ValueError, match="bogus"):
        AttentionKernelFit.load(tmp_path / "bad.json")

"""Context parallelism on gloo (2 and 4 ranks): loss and gradients equal the one-process run.

One spawn per world size covers every policy, a long multimodal batch (two rows flattened,
images bidirectional, a packed row), a batch shorter than one block per rank, and a batch
with fewer tokens than ranks (an empty shard must still join every collective). The K/V exchange
overlapped with the own keys' attention (``balanced+overlap``) equals both the one-process and the
plain CP run; the LSE merge it relies on is tested on one process.
"""

import pytest

import cp_workers
from dist_harness import run_world


@pytest.mark.parametrize("world_size", [2, 4])
def test_cp_matches_single_process_for_every_policy(world_size):
    per_rank = run_world(cp_workers.cp_worker, world_size)
    for (policy, case), (worst, counts) in per_rank[0].items():
        assert worst < (cp_workers.OVERLAP_TOL if "overlap" in policy else cp_workers.TOL), \
            f"{policy} ({case} batch) on {world_size} ranks differs by {worst}"
    # ranks may hold different token counts under the balancing policies; all ranks agree on them
    for other in per_rank[1:]:
        assert {k: v[1] for k, v in other.items()} == {k: v[1] for k, v in per_rank[0].items()}
    for policy in ("uniform", "balanced"):
        short, tiny = per_rank[0][(policy, "short")][1], per_rank[0][(policy, "tiny")][1]
        assert sum(short) == 5 and min(short) >= 1  # 5 tokens, block 128: every rank still gets one
        assert sum(tiny) == 3 and (min(tiny) == 0) == (world_size > 3)
    # overlapped: long, short and tiny (at 4 ranks the empty rank's query sees no own key)
    assert {case for policy, case in per_rank[0] if "overlap" in policy} == {"long", "short", "tiny"}


def test_lse_merge_of_two_key_sets_equals_one_softmax():
    """Own/received split + LSE merge = one masked softmax over all keys, in output and gradients
    (float64, GQA), with rows that see no key in one part, rows that see none at all (output 0,
    finite gradients), and a part with no keys."""
    import torch

    from amylum.parallel.cp_overlap import interval_mask, merge_partials, reference_attention_lse, split_intervals

    g = torch.Generator().manual_seed(0)
    n, kv_len, heads, kv_heads, d = 7, 12, 4, 2, 5
    lo = torch.tensor([0, 3, 5, 0, 8, 4, 6])
    hi = torch.tensor([11, 4, 5, 2, 11, 3, 7])  # row 5: no key at all (hi < lo)
    one_sided = torch.tensor([1, 1, 1, 0, 0, 0, 0, 0, 1, 1, 1, 1], dtype=torch.bool)  # rows 1-4: keys in one part
    for is_own in (torch.rand(kv_len, generator=g) < 0.5, torch.zeros(kv_len, dtype=torch.bool), one_sided):
        q = torch.randn(1, heads, n, d, generator=g, dtype=torch.float64, requires_grad=True)
        kv = torch.randn(1, kv_heads, kv_len, 2 * d, generator=g, dtype=torch.float64, requires_grad=True)
        w = torch.randn(1, heads, n, d, generator=g, dtype=torch.float64)
        full, _ = reference_attention_lse(q, kv[..., :d], kv[..., d:], interval_mask(lo, hi, kv_len), 0.3)
        (own_lo, own_hi), (rem_lo, rem_hi) = split_intervals(is_own, lo, hi)
        own, rem = kv[:, :, is_own], kv[:, :, ~is_own]
        own_mask, rem_mask = interval_mask(own_lo, own_hi, own.shape[2]), interval_mask(rem_lo, rem_hi, rem.shape[2])
        o1, l1 = reference_attention_lse(q, own[..., :d], own[..., d:], own_mask, 0.3)
        o2, l2 = reference_attention_lse(q, rem[..., :d], rem[..., d:], rem_mask, 0.3)
        merged = merge_partials(o1, l1, o2, l2)
        assert torch.allclose(merged, full, atol=1e-12)
        assert torch.equal(merged[:, :, 5], torch.zeros_like(merged[:, :, 5]))
        grads_full = torch.autograd.grad((full * w).sum(), (q, kv))
        grads_merged = torch.autograd.grad((merge_partials(o1, l1, o2, l2) * w).sum(), (q, kv))
        for a, b in zip(grads_full, grads_merged):
            assert torch.isfinite(b).all() and torch.allclose(a, b, atol=1e-12)
    # the same result from SDPA on the rows that see a key
    mask = interval_mask(lo, hi, kv_len)
    sdpa = torch.nn.functional.scaled_dot_product_attention(
        q, kv[..., :d].repeat_interleave(2, 1), kv[..., d:].repeat_interleave(2, 1), attn_mask=mask, scale=0.3)
    keep = torch.tensor([r != 5 for r in range(n)])
    assert torch.allclose(full[:, :, keep], sdpa[:, :, keep], atol=1e-12)


def test_flex_part_returns_the_reference_output_and_lse():
    """The GPU path's partial attention (FlexAttention with its LSE, rectangular block mask) on
    CPU, forward only (FlexAttention has no CPU backward): output and LSE equal the dense part's,
    including rows with no allowed key (LSE -inf, output 0)."""
    import torch

    from amylum.parallel.cp_overlap import PartMask

    g = torch.Generator().manual_seed(1)
    n, kv_len, d = 9, 20, 8
    lo = torch.tensor([0, 3, 5, 19, 8, 4, 6, 10, 0])
    hi = torch.tensor([19, 4, 5, 19, 11, 3, 7, 18, 0])  # row 5 sees nothing
    q = torch.randn(1, 4, n, d, generator=g)
    k, v = torch.randn(1, 2, kv_len, d, generator=g), torch.randn(1, 2, kv_len, d, generator=g)
    out_f, lse_f = PartMask(lo, hi, kv_len, "flex", 8).attend(q, k, v, 0.25)
    out_r, lse_r = PartMask(lo, hi, kv_len, "reference", 8).attend(q, k, v, 0.25)
    assert torch.allclose(out_f, out_r, atol=1e-5)
    assert torch.equal(torch.isinf(lse_f), torch.isinf(lse_r)) and torch.isinf(lse_r[:, :, 5]).all()
    finite = torch.isfinite(lse_r)
    assert torch.allclose(lse_f[finite], lse_r[finite], atol=1e-5)

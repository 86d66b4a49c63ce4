"""The overlapped CP attention's GPU path: FlexAttention on the own and the received keys, merged by
LSE, equals one FlexAttention over all keys, forward and backward (bf16). Needs CUDA (the
FlexAttention backward does not run on CPU; the CPU tests check the same merge with the dense
reference in test_context_parallel.py)."""

import pytest
import torch

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="FlexAttention backward needs a GPU")


def _intervals(n: int, g: torch.Generator):
    """Causal text with bidirectional 'image' runs and packed-sample boundaries: key intervals per query."""
    lo, hi = torch.zeros(n, dtype=torch.long), torch.arange(n)
    start = 0
    while start < n:  # packed samples of 300-900 tokens, each with one bidirectional run
        end = min(n, start + int(torch.randint(300, 900, (1,), generator=g)))
        lo[start:end] = start
        a = start + int(torch.randint(0, max(1, end - start - 200), (1,), generator=g))
        b = min(end, a + 200)
        hi[a:b] = b - 1
        start = end
    return lo, hi


@pytest.mark.parametrize("own_fraction", [0.25, 0.5])
def test_flex_parts_merged_by_lse_equal_one_flex_call(own_fraction):
    from amylum.attention.backends import run_flex
    from amylum.parallel.cp_attention import rect_block_mask
    from amylum.parallel.cp_overlap import PartMask, merge_partials, split_intervals

    dev, n_keys, n_q, heads, kv_heads, dim = "cuda", 4096, 1024, 8, 2, 64
    g = torch.Generator().manual_seed(0)
    lo, hi = _intervals(n_keys, g)
    queries = torch.randperm(n_keys, generator=g)[:n_q].sort().values  # this rank's queries: any subset
    lo, hi = lo[queries].to(dev), hi[queries].to(dev)
    is_own = (torch.rand(n_keys // 128, generator=g) < own_fraction).repeat_interleave(128).to(dev)  # whole blocks
    q = torch.randn(1, heads, n_q, dim, device=dev, dtype=torch.bfloat16, requires_grad=True)
    k = torch.randn(1, kv_heads, n_keys, dim, device=dev, dtype=torch.bfloat16, requires_grad=True)
    v = torch.randn(1, kv_heads, n_keys, dim, device=dev, dtype=torch.bfloat16, requires_grad=True)
    grad = torch.randn(1, heads, n_q, dim, device=dev, dtype=torch.bfloat16)

    want = run_flex(q, k, v, rect_block_mask(lo, hi, n_keys, 128))
    want.backward(grad)
    ref = [t.grad.clone() for t in (q, k, v)]
    for t in (q, k, v):
        t.grad = None

    (own_lo, own_hi), (rem_lo, rem_hi) = split_intervals(is_own, lo, hi)
    n_own = int(is_own.sum())
    own = PartMask(own_lo, own_hi, n_own, "flex", 128)
    rem = PartMask(rem_lo, rem_hi, n_keys - n_own, "flex", 128)
    out_a, lse_a = own.attend(q, k[:, :, is_own], v[:, :, is_own], None)
    out_b, lse_b = rem.attend(q, k[:, :, ~is_own], v[:, :, ~is_own], None)
    got = merge_partials(out_a, lse_a, out_b, lse_b)
    got.backward(grad)

    assert (got.float() - want.float()).abs().max().item() < 2e-2
    for name, a, b in zip("qkv", (q.grad, k.grad, v.grad), ref):
        err = (a.float() - b.float()).abs().max().item() / b.float().abs().max().item()
        assert err < 3e-2, (name, err)

"""Block tables and the decomposed route against the dense reference (CPU, fp32/fp64)."""

import warnings

import pytest
import torch

from amylum.attention import decomposed_attention, decomposed_mask, dense_mask, flex_block_mask, mask_spec, tile_classes

from .mask_cases import random_batch


def _reference(q, k, v, dense, scale):
    """q (B, H, S, D), k/v (B, Hkv, S, D), dense (B, S, S) → (B, H, S, D)."""
    rep = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(rep, 1), v.repeat_interleave(rep, 1)
    return torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=dense[:, None], scale=scale)


@pytest.mark.parametrize("block", [(4, 4), (8, 4), (4, 8)])
def test_tile_classes_agree_with_dense(block):
    g = torch.Generator().manual_seed(1)
    for _ in range(10):
        b = random_batch(g, batch=2, seq=int(torch.randint(5, 40, (1,), generator=g)))
        spec = mask_spec(b)
        partial, full = tile_classes(spec, *block)
        dense = dense_mask(b)
        S = dense.shape[-1]
        bq, bk = block
        for r in range(2):
            for i in range(partial.shape[1]):
                for j in range(partial.shape[2]):
                    tile = dense[r, i * bq : (i + 1) * bq, j * bk : (j + 1) * bk]
                    assert not (partial[r, i, j] and full[r, i, j])
                    if full[r, i, j]:
                        assert tile.all()  # "full" is exact: no mask is applied there
                    if tile.any():
                        assert partial[r, i, j] or full[r, i, j]  # never skip an allowed entry
                    if tile.all() and tile.numel() == bq * bk and (i + 1) * bq <= S:
                        assert full[r, i, j]


@pytest.mark.parametrize("heads,kv_heads", [(4, 4), (4, 2)])
def test_decomposed_matches_reference_forward_and_grads(heads, kv_heads):
    g = torch.Generator().manual_seed(2)
    for trial in range(6):
        b = random_batch(g, batch=2, seq=int(torch.randint(2, 30, (1,), generator=g)), max_segment=8)
        B, S = b.sample_ids.shape
        D = 8
        q = torch.randn(B, heads, S, D, generator=g, dtype=torch.float64, requires_grad=True)
        k = torch.randn(B, kv_heads, S, D, generator=g, dtype=torch.float64, requires_grad=True)
        v = torch.randn(B, kv_heads, S, D, generator=g, dtype=torch.float64, requires_grad=True)
        weight = torch.randn(B, S, heads, D, generator=g, dtype=torch.float64)
        valid = (b.sample_ids >= 0)[:, :, None, None]  # padding outputs are ignored by contract
        scale = 0.3

        ref = _reference(q, k, v, dense_mask(b), scale).transpose(1, 2)
        ref_grads = torch.autograd.grad((ref * weight * valid).sum(), (q, k, v))

        mask = decomposed_mask(mask_spec(b))
        flat = [t.transpose(1, 2).reshape(B * S, t.shape[1], D) for t in (q, k, v)]
        out = decomposed_attention(*flat, mask, scale, kernel="math").view(B, S, heads, D)
        grads = torch.autograd.grad((out * weight * valid).sum(), (q, k, v))

        torch.testing.assert_close(out * valid, ref * valid, msg=f"trial {trial}")
        for got, want, name in zip(grads, ref_grads, "qkv"):
            torch.testing.assert_close(got, want, msg=f"d{name}, trial {trial}")


def test_decomposed_mask_segments_and_documents():
    b = random_batch(torch.Generator().manual_seed(3), batch=1, seq=1)
    b.sample_ids = torch.tensor([[0, 0, 0, 0, 1, 1, -1, -1]])
    b.segment_ids = torch.tensor([[-1, 0, 0, 0, 1, 1, -1, -1]])
    m = decomposed_mask(mask_spec(b))
    assert m.doc_cu.tolist() == [0, 4, 6, 8]
    # segment [1, 4): queries 2, 1 (reversed); segment [4, 6): query 4
    assert m.seg_q_idx.tolist() == [2, 1, 4]
    assert m.seg_cu.tolist() == [0, 2, 3]


def test_flex_forward_matches_reference_on_cpu():
    from amylum.attention.backends import run_flex

    g = torch.Generator().manual_seed(4)
    b = random_batch(g, batch=2, seq=37, max_segment=10)
    spec = mask_spec(b)
    q = torch.randn(2, 4, 37, 16, generator=g)
    k = torch.randn(2, 2, 37, 16, generator=g)
    v = torch.randn(2, 2, 37, 16, generator=g)
    valid = (b.sample_ids >= 0)[:, None, :, None]
    ref = _reference(q, k, v, dense_mask(b), 0.25)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # eager flex warns that it is unfused: expected on CPU
        out = run_flex(q, k, v, flex_block_mask(spec, 16), scaling=0.25)
    torch.testing.assert_close(out * valid, ref * valid, atol=1e-5, rtol=1e-5)

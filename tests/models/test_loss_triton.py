"""The loss's Triton chunk kernel (models/loss_triton.py) against the reference arithmetic of
models/loss.py: on a GPU, and on a CPU through Triton's interpreter (TRITON_INTERPRET=1)."""

import pytest
import torch

from amylum.models.loss import _chunk_loss_and_grad
from amylum.triton_support import interpreting, triton_available

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
pytestmark = [
    pytest.mark.skipif(not triton_available(), reason="needs triton"),
    pytest.mark.skipif(DEVICE == "cpu" and not interpreting(), reason="on CPU the kernel needs TRITON_INTERPRET=1"),
]


@pytest.mark.parametrize("rows, vocab, scale, need_grad", [(5, 1000, 1.0, True), (3, 5000, 0.5, True), (4, 333, 1.0, False)])
def test_kernel_matches_the_reference(rows, vocab, scale, need_grad):
    from amylum.models.loss_triton import triton_chunk_loss_and_grad

    g = torch.Generator().manual_seed(rows)
    logits = (torch.randn(rows, vocab, generator=g) * 4).to(torch.bfloat16).to(DEVICE)
    targets = torch.randint(0, vocab, (rows,), generator=g).to(DEVICE)
    denominator = torch.full((), 7.0, device=DEVICE)
    loss, grad = triton_chunk_loss_and_grad(logits, targets, denominator, scale, need_grad)
    want_loss, want_grad = _chunk_loss_and_grad(logits, targets, denominator, scale, None, need_grad)
    torch.testing.assert_close(loss, want_loss, rtol=1e-5, atol=1e-5)
    if not need_grad:
        assert grad is None
        return
    assert grad.dtype == logits.dtype and grad.shape == logits.shape
    # fp32 sums in another order: at most one bf16 ulp apart
    assert ((grad.float() - want_grad.float()).abs() <= want_grad.float().abs() * 2 ** -7 + 1e-7).all()


def test_a_row_slice_of_a_wider_array_is_read_with_its_stride():
    from amylum.models.loss_triton import triton_chunk_loss_and_grad

    g = torch.Generator().manual_seed(0)
    wide = torch.randn(4, 700, generator=g).to(DEVICE)
    logits = wide[:, :500]  # row stride 700
    targets = torch.tensor([0, 499, 250, 3], device=DEVICE)
    denominator = torch.full((), 4.0, device=DEVICE)
    loss, grad = triton_chunk_loss_and_grad(logits, targets, denominator, 1.0, True)
    want_loss, want_grad = _chunk_loss_and_grad(logits, targets, denominator, 1.0, None, True)
    torch.testing.assert_close(loss, want_loss)
    torch.testing.assert_close(grad, want_grad, rtol=1e-5, atol=1e-7)
    with pytest.raises(ValueError, match="unit column stride"):
        triton_chunk_loss_and_grad(wide.t(), targets, denominator, 1.0, True)

"""The fused LM-head cross-entropy's GPU path: the compiled per-chunk loss/gradient and the fp32
weight-gradient accumulation by the matmul (``out_dtype``) against full logits in fp32, bf16
inputs. Needs CUDA (on CPU the eager path runs; test_fused_loss.py covers it)."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from amylum.models.loss import fused_linear_cross_entropy

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="the compiled path runs on CUDA only")


@pytest.mark.parametrize("chunk, softcap, bias", [(128, None, False), (1000, None, False), (96, 30.0, True)])
def test_fused_loss_bf16_matches_fp32_logits(chunk, softcap, bias):
    torch.manual_seed(0)
    head = nn.Linear(64, 5000, bias=bias).cuda().to(torch.bfloat16)
    hidden = torch.randn(300, 64, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    targets = torch.randint(0, 5000, (300,), device="cuda")
    loss = fused_linear_cross_entropy(hidden, head, targets, denominator=250, chunk_size=chunk, softcap=softcap)
    (loss * 2).backward()
    got = [hidden.grad.float(), head.weight.grad.float()] + ([head.bias.grad.float()] if bias else [])
    h32 = hidden.detach().float().requires_grad_()
    w32 = head.weight.detach().float().requires_grad_()
    b32 = head.bias.detach().float().requires_grad_() if bias else None
    logits = F.linear(h32, w32, b32)
    if softcap is not None:
        logits = softcap * torch.tanh(logits / softcap)
    ref = F.cross_entropy(logits, targets, reduction="sum") / 250
    (ref * 2).backward()
    want = [h32.grad, w32.grad] + ([b32.grad] if bias else [])
    assert torch.allclose(loss.float(), ref, rtol=2e-3)
    for a, b in zip(got, want):
        # bf16 logits and gradients: relative to the largest entry
        assert (a - b).abs().max() <= 2e-2 * b.abs().max(), (a - b).abs().max() / b.abs().max()


def test_no_grad_path_gives_the_loss_only():
    torch.manual_seed(0)
    head = nn.Linear(32, 700).cuda().to(torch.bfloat16)
    hidden = torch.randn(50, 32, device="cuda", dtype=torch.bfloat16)
    targets = torch.randint(0, 700, (50,), device="cuda")
    with torch.no_grad():
        loss = fused_linear_cross_entropy(hidden, head, targets, denominator=50, chunk_size=16)
        ref = F.cross_entropy(head(hidden).float(), targets)
    assert torch.allclose(loss, ref, rtol=2e-3)

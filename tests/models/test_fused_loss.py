import pytest
import torch
import torch.nn.functional as F
from torch import nn

from amylum.models import build_preset
from amylum.models.loss import fused_linear_cross_entropy
from model_batches import build_batch, random_inputs


@pytest.mark.parametrize("chunk", [8, 64])  # several chunks (fp32 weight-gradient accumulator); one chunk
@pytest.mark.parametrize("softcap, scale, bias", [(None, 1.0, False), (5.0, 0.5, True)])
def test_fused_loss_matches_full_logits(softcap, scale, bias, chunk):
    torch.manual_seed(0)
    head = nn.Linear(16, 50, bias=bias)
    hidden = torch.randn(37, 16, requires_grad=True)
    targets = torch.randint(0, 50, (37,))
    loss = fused_linear_cross_entropy(hidden, head, targets, denominator=40, chunk_size=chunk, scale=scale, softcap=softcap)
    (loss * 3).backward()
    got = (hidden.grad.clone(), head.weight.grad.clone())
    hidden.grad = None
    head.zero_grad()
    logits = head(hidden) * scale
    if softcap is not None:
        logits = softcap * torch.tanh(logits / softcap)
    reference = F.cross_entropy(logits, targets, reduction="sum") / 40
    (reference * 3).backward()
    assert torch.allclose(loss, reference, atol=1e-5)
    assert torch.allclose(got[0], hidden.grad, atol=1e-5)
    assert torch.allclose(got[1], head.weight.grad, atol=1e-5)


def test_fused_path_equals_hf_path_on_a_multimodal_batch():
    torch.manual_seed(0)
    model = build_preset("tiny-vlm", vocab_size=64)
    rows = [
        [("a", [("text", [5, 6], False), ("vision", 16), ("text", [7, 8, 9], True)]), ("b", [("text", [1, 2, 3], True)])],
        [("c", [("text", [5], False), ("vision", 16), ("text", [10, 11], True)])],
    ]
    batch = build_batch(rows, ["vision"], random_inputs(model, torch.Generator().manual_seed(0)))
    fused = model(batch, num_items_in_batch=11)
    fused.loss.backward()
    fused_grads = [p.grad.clone() for p in model.parameters() if p.grad is not None]
    model.zero_grad()
    model.loss_impl = "hf"
    hf = model(batch, num_items_in_batch=11)
    hf.loss.backward()
    hf_grads = [p.grad.clone() for p in model.parameters() if p.grad is not None]
    assert torch.allclose(fused.loss, hf.loss, atol=1e-5)
    assert int(fused.num_target_tokens) == int(hf.num_target_tokens)
    assert len(fused_grads) == len(hf_grads)
    assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(fused_grads, hf_grads))


def test_host_index_gives_the_same_loss():
    torch.manual_seed(0)
    model = build_preset("tiny-vlm", vocab_size=64)
    rows = [[("a", [("text", [5, 6], False), ("vision", 16), ("text", [7, 8, 9], True)])]]
    batch = build_batch(rows, ["vision"], random_inputs(model, torch.Generator().manual_seed(0)))
    plain = model(batch).loss
    indexed = batch.to("cpu")
    assert indexed.index is not None and indexed.index.target_positions.tolist() == [17, 18, 19]
    assert torch.allclose(model(indexed).loss, plain)


def test_fused_loss_under_autocast_matches_the_unfused_loss_under_autocast():
    """fp32 weights under bf16 autocast (the trainer's GPU path; CPU autocast here): the fused loss
    picks autocast's dtype itself and writes fp32 gradients, like the unfused path."""
    torch.manual_seed(0)
    head = nn.Linear(16, 50, bias=False)
    hidden = torch.randn(37, 16, requires_grad=True)
    targets = torch.randint(0, 50, (37,))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = fused_linear_cross_entropy(hidden, head, targets, denominator=37, chunk_size=8)
    loss.backward()
    got = (hidden.grad.clone(), head.weight.grad.clone())
    assert got[0].dtype == torch.float32 and got[1].dtype == torch.float32
    hidden.grad = None
    head.zero_grad()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        reference = F.cross_entropy(head(hidden).float(), targets)
    reference.backward()
    assert torch.allclose(loss, reference, rtol=1e-2)
    assert torch.allclose(got[0], hidden.grad, atol=1e-2 * hidden.grad.abs().max())
    assert torch.allclose(got[1], head.weight.grad, atol=1e-2 * head.weight.grad.abs().max())

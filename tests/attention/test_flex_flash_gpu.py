"""FlexAttention through FlashAttention-4's kernels (backend "flex-flash") against its Triton
kernels (backend "flex"), forward and backward, on a Hopper/Blackwell GPU with flash-attn-4."""

from types import SimpleNamespace

import pytest
import torch

from amylum.attention import attention_inputs, setup_llm_attention
from amylum.attention.integration import flash_available

from .mask_cases import random_batch

pytestmark = pytest.mark.skipif(not flash_available(), reason="needs flash-attn-4 and an sm90/sm100 GPU")


def _qwen2(seed: int = 0):
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(seed)
    cfg = Qwen2Config(vocab_size=64, hidden_size=256, intermediate_size=512, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024)
    return Qwen2ForCausalLM(cfg).to("cuda", torch.bfloat16)


def test_flex_flash_matches_flex_forward_and_backward():
    g = torch.Generator().manual_seed(3)
    batch = random_batch(g, batch=2, seq=300, max_segment=90)
    batch = SimpleNamespace(**{k: v.cuda() for k, v in vars(batch).items()})
    valid = (batch.sample_ids >= 0)[..., None]
    embeds = torch.randn(2, 300, 256, generator=g).to("cuda", torch.bfloat16)
    results = {}
    for backend in ("flex", "flex-flash"):
        model = _qwen2()
        setup_llm_attention(model, backend)
        x = embeds.clone().requires_grad_(True)
        logits = model(inputs_embeds=x, position_ids=batch.position_ids, **attention_inputs(batch, backend=backend)).logits
        (logits.float() * valid).sum().backward()
        results[backend] = ((logits.float() * valid).detach(), x.grad.float())
    (ref, ref_grad), (got, got_grad) = results["flex"], results["flex-flash"]
    assert ((got - ref).norm() / ref.norm()).item() < 2e-2
    assert ((got_grad - ref_grad).norm() / ref_grad.norm()).item() < 2e-2

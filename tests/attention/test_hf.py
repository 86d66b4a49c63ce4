"""amylum's backends inside real HF causal LMs (tiny random Llama / Qwen2), through AttentionInterface."""

import warnings
from types import SimpleNamespace

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

from amylum.attention import attention_inputs, setup_llm_attention

from .mask_cases import random_batch

SMALL = dict(vocab_size=50, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, max_position_embeddings=64)


def _model(family: str, impl: str = "sdpa"):
    torch.manual_seed(0)
    cls, cfg = {"llama": (LlamaForCausalLM, LlamaConfig), "qwen2": (Qwen2ForCausalLM, Qwen2Config)}[family]
    model = cls(cfg(**SMALL, attn_implementation=impl)).eval()
    return model


def _logits(model, embeds, position_ids, grad: bool = False, **kwargs):
    # FlexAttention refuses CPU inputs that require grad (no CPU backward): forward-only by default.
    with warnings.catch_warnings(), torch.set_grad_enabled(grad):
        warnings.simplefilter("ignore", UserWarning)  # eager flex on CPU warns it is unfused
        return model(inputs_embeds=embeds, position_ids=position_ids, **kwargs).logits


@pytest.mark.parametrize("family", ["llama", "qwen2"])
def test_reference_causal_equals_hf_sdpa(family):
    model = _model(family)
    g = torch.Generator().manual_seed(0)
    embeds = torch.randn(2, 10, 32, generator=g)
    pos = torch.arange(10).expand(2, 10)
    expected = _logits(model, embeds, pos)  # HF's own SDPA, plain causal
    batch = SimpleNamespace(sample_ids=torch.zeros(2, 10, dtype=torch.long), segment_ids=torch.full((2, 10), -1))
    setup_llm_attention(model, "reference")
    assert model.config._attn_implementation == "amylum_reference"
    got = _logits(model, embeds, pos, **attention_inputs(batch, mode="causal", backend="reference"))
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("family", ["llama", "qwen2"])
def test_packed_causal_equals_hf_packed_sequences(family):
    # HF detects packing from restarting position_ids; our causal mode must agree with it.
    model = _model(family)
    sample_ids = torch.tensor([[0, 0, 0, 0, 1, 1, 1, 2, 2, 2]])
    pos = torch.tensor([[0, 1, 2, 3, 0, 1, 2, 0, 1, 2]])
    embeds = torch.randn(1, 10, 32, generator=torch.Generator().manual_seed(1))
    expected = _logits(model, embeds, pos, use_cache=False)  # HF detects packing only without a cache
    batch = SimpleNamespace(sample_ids=sample_ids, segment_ids=torch.full((1, 10), -1))
    for backend in ("reference", "flex", "decomposed"):
        setup_llm_attention(model, backend)
        got = _logits(model, embeds, pos, **attention_inputs(batch, mode="causal", backend=backend))
        torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5, msg=backend)


@pytest.mark.parametrize("family", ["llama", "qwen2"])
def test_backends_agree_on_multimodal_batches_forward_and_backward(family):
    model = _model(family)
    g = torch.Generator().manual_seed(5)
    batch = random_batch(g, batch=2, seq=20, max_segment=6)
    valid = (batch.sample_ids >= 0)[..., None]
    embeds = torch.randn(2, 20, 32, generator=g)
    results = {}
    for backend in ("reference", "flex", "flex-flash", "decomposed"):  # flex-flash: eager flex on CPU
        setup_llm_attention(model, backend)
        x = embeds.clone().requires_grad_(True)
        kwargs = attention_inputs(batch, backend=backend)
        forward_only = backend.startswith("flex")  # FlexAttention has no CPU backward
        logits = _logits(model, x, batch.position_ids, grad=not forward_only, **kwargs)
        grad = None
        if not forward_only:
            (logits * valid).sum().backward()
            grad = x.grad
        results[backend] = (logits.detach() * valid, grad)
    ref_logits, ref_grad = results["reference"]
    for backend, (logits, grad) in results.items():
        torch.testing.assert_close(logits, ref_logits, atol=1e-5, rtol=1e-5, msg=backend)
        if grad is not None:
            torch.testing.assert_close(grad, ref_grad, atol=1e-5, rtol=1e-5, msg=backend)
    # The multimodal mask must actually matter here (otherwise this test proves nothing).
    setup_llm_attention(model, "reference")
    causal = _logits(model, embeds, batch.position_ids, **attention_inputs(batch, mode="causal")).detach() * valid
    assert not torch.allclose(causal, ref_logits, atol=1e-4)


@pytest.mark.parametrize("backend", ["reference", "flex", "flex-flash", "decomposed"])
def test_decoding_with_kv_cache_falls_back_to_plain_path(backend):
    model, plain = _model("llama"), _model("llama")
    setup_llm_attention(model, backend)
    g = torch.Generator().manual_seed(6)
    prompt, step = torch.randn(1, 6, 32, generator=g), torch.randn(1, 1, 32, generator=g)
    text_only = SimpleNamespace(sample_ids=torch.zeros(1, 6, dtype=torch.long), segment_ids=torch.full((1, 6), -1))
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        out = model(inputs_embeds=prompt, use_cache=True, **attention_inputs(text_only, backend=backend))
        ref = plain(inputs_embeds=prompt, use_cache=True)
        step_ids = SimpleNamespace(sample_ids=torch.zeros(1, 1, dtype=torch.long), segment_ids=torch.full((1, 1), -1))
        assert attention_inputs(step_ids, backend=backend) == {}
        nxt = model(inputs_embeds=step, cache=out.past_key_values, use_cache=True)
        nxt_ref = plain(inputs_embeds=step, cache=ref.past_key_values, use_cache=True)
    torch.testing.assert_close(out.logits, ref.logits, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(nxt.logits, nxt_ref.logits, atol=1e-5, rtol=1e-5)


def test_setup_is_idempotent_and_hf_backend_leaves_model_alone():
    model = _model("qwen2")
    setup_llm_attention(model, "hf")
    assert model.config._attn_implementation == "sdpa"
    setup_llm_attention(model, "reference")
    setup_llm_attention(model, "reference")
    assert model.config._attn_implementation == "amylum_reference"
    with pytest.raises(ValueError, match="unknown attention backend"):
        setup_llm_attention(model, "triton")


def test_hf_backend_inputs_are_plain():
    padded = SimpleNamespace(sample_ids=torch.tensor([[0, 0, -1]]), segment_ids=torch.tensor([[0, 0, -1]]))
    assert torch.equal(attention_inputs(padded, backend="hf")["attention_mask"], torch.tensor([[1, 1, 0]]))
    packed = SimpleNamespace(sample_ids=torch.tensor([[0, 1, 1]]), segment_ids=torch.full((1, 3), -1))
    assert attention_inputs(packed, backend="hf") == {}


def test_decomposed_without_mask_is_a_clear_error():
    model = _model("llama")
    setup_llm_attention(model, "decomposed")
    with pytest.raises(ValueError, match="needs the per-batch mask"):
        _logits(model, torch.randn(1, 4, 32), torch.arange(4)[None])


def test_mask_from_another_batch_is_rejected():
    model = _model("llama")
    setup_llm_attention(model, "reference")
    other = SimpleNamespace(sample_ids=torch.zeros(1, 5, dtype=torch.long), segment_ids=torch.full((1, 5), -1))
    with pytest.raises(ValueError, match="batch fed to the model"):
        _logits(model, torch.randn(1, 4, 32), torch.arange(4)[None], **attention_inputs(other))


def test_fast_alias_resolves_to_the_benchmarked_route():
    from torch.nn.attention.flex_attention import BlockMask

    from amylum.attention import resolve_backend

    assert resolve_backend("fast") == "flex"
    batch = SimpleNamespace(sample_ids=torch.zeros(1, 8, dtype=torch.long), segment_ids=torch.full((1, 8), -1))
    assert isinstance(attention_inputs(batch, backend="fast")["attention_mask"], BlockMask)


def test_flex_flash_without_fa4_on_a_gpu_machine_is_a_clear_error(monkeypatch):
    import amylum.attention.integration as integration

    monkeypatch.setattr(integration.torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(integration, "flash_available", lambda: False)
    with pytest.raises(ValueError, match="flash-attn-4"):
        setup_llm_attention(_model("llama"), "flex-flash")
    monkeypatch.setattr(integration, "flash_available", lambda: True)
    assert integration.resolve_backend("fast") == "flex"  # flex-flash is chosen explicitly

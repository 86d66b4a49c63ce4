"""Evaluation generation against HF ``generate`` and ``MultimodalLM.generate``."""

import copy

import pytest
import torch
from transformers import AutoModelForCausalLM, LlamaConfig

from amylum.data.batch import IGNORE_INDEX, MultimodalBatch
from amylum.evaluation.generate import Sampling, generate, pick_tokens
from amylum.models import MultimodalLM

EOS = 2


def tiny_llm(seed=0):
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=64, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                      intermediate_size=64, bos_token_id=1, eos_token_id=EOS, pad_token_id=0)
    return AutoModelForCausalLM.from_config(cfg).eval()


def right_padded(prompts):
    width = max(map(len, prompts))
    rows = len(prompts)
    ids = torch.zeros(rows, width, dtype=torch.long)
    sample_ids = torch.full((rows, width), -1)
    pos = torch.zeros(rows, width, dtype=torch.long)
    for r, p in enumerate(prompts):
        ids[r, : len(p)] = torch.tensor(p)
        sample_ids[r, : len(p)] = 0
        pos[r, : len(p)] = torch.arange(len(p))
    return MultimodalBatch(input_ids=ids, labels=torch.full_like(ids, IGNORE_INDEX), position_ids=pos,
                           sample_ids=sample_ids, segment_ids=torch.full_like(ids, -1), kinds=torch.zeros_like(ids))


PROMPTS = [[1, 5, 9, 13, 20], [1, 7], [1, 30, 31, 40]]


@pytest.mark.parametrize("backend", ["reference", "hf"])
def test_greedy_matches_hf_generate_for_bare_llm(backend):
    llm = tiny_llm()
    reference_llm = copy.deepcopy(llm)  # HF's own attention, untouched by amylum's backend setup
    model = MultimodalLM(llm, {}, attention_backend=backend).eval()
    got = generate(model, right_padded(PROMPTS), max_new_tokens=6, eos_token_id=EOS)
    for prompt, ours in zip(PROMPTS, got):
        hf = reference_llm.generate(torch.tensor([prompt]), attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
                                    do_sample=False, max_new_tokens=6, eos_token_id=EOS, pad_token_id=0)
        new = hf[0, len(prompt):].tolist()
        expected = new[: new.index(EOS)] if EOS in new else new
        assert ours == expected


def test_eos_cut_and_no_eos():
    model = MultimodalLM(tiny_llm(), {}).eval()
    full = generate(model, right_padded(PROMPTS), max_new_tokens=5)
    assert all(len(o) == 5 for o in full)
    first = full[0][0]
    cut = generate(model, right_padded(PROMPTS), max_new_tokens=5, eos_token_id=first)
    assert cut[0] == []


def test_sampling_is_seeded_and_top_p_limits_to_argmax():
    model = MultimodalLM(tiny_llm(), {}).eval()
    batch = right_padded(PROMPTS)
    a = generate(model, batch, max_new_tokens=8, sampling=Sampling(temperature=2.0, seed=3))
    b = generate(model, batch, max_new_tokens=8, sampling=Sampling(temperature=2.0, seed=3))
    c = generate(model, batch, max_new_tokens=8, sampling=Sampling(temperature=2.0, seed=4))
    assert a == b and a != c
    greedy = generate(model, batch, max_new_tokens=8)
    assert generate(model, batch, max_new_tokens=8, sampling=Sampling(temperature=1.0, top_p=1e-6)) == greedy


def test_pick_tokens_nucleus():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    g = torch.Generator().manual_seed(0)
    picks = {int(pick_tokens(logits, Sampling(temperature=1.0, top_p=0.7), g)) for _ in range(200)}
    assert picks == {0, 1}  # 0.5 < 0.7 ≤ 0.8: the nucleus is the two most likely tokens
    with pytest.raises(ValueError, match="top_p"):
        Sampling(top_p=0)


def test_multimodal_greedy_first_token_is_the_forward_argmax():
    from amylum.models import build_preset

    model = build_preset("tiny-vlm", vocab_size=64, seed=0).eval()
    n = model.modality_specs()["vision"].num_tokens()
    prompts = [[1, 5] + [3] * n + [9], [1, 4, 6]]
    batch = right_padded(prompts)
    batch.kinds[0, 2 : 2 + n] = 1
    batch.segment_ids[0, 2 : 2 + n] = 0
    batch.modalities = ("vision",)
    batch.encoder_inputs = {"vision": {"pixel_values": torch.randn(1, 3, 16, 16, generator=torch.Generator().manual_seed(0))}}
    batch.item_tokens = {"vision": [n]}
    batch.item_records = {"vision": ["r0"]}
    batch.records = [["r0"], ["r1"]]
    out = generate(model, batch, max_new_tokens=4)
    # with the image scattered in and rows left-aligned, step one must equal a plain forward's argmax
    logits = model(batch, return_logits=True).logits
    last = (batch.sample_ids >= 0).sum(1) - 1
    assert [o[0] for o in out] == logits[torch.arange(2), last].argmax(-1).tolist()

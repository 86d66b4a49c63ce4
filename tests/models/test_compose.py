import pytest
import torch
from torch import nn
from transformers import AutoModelForCausalLM, LlamaConfig

from amylum.models import (
    BranchFreeze,
    FreezeSpec,
    ModalityEncoder,
    MultimodalLM,
    Projector,
    TensorInputSpec,
    apply_freeze,
    build_preset,
)
from amylum.models.presets import _tiny_llama
from model_batches import build_batch, random_inputs


def _vlm_batch(model, gen):
    rows = [
        [("r0", [("text", [5, 6], False), ("vision", 16), ("text", [7, 8, 9], True)])],
        [("r1", [("text", [5], False), ("vision", 16), ("vision", 16), ("text", [10, 11], True)])],
    ]
    return build_batch(rows, ["vision"], random_inputs(model, gen))


def test_tiny_vlm_forward_and_specs():
    torch.manual_seed(0)
    model = build_preset("tiny-vlm", vocab_size=64)
    spec = model.modality_specs()["vision"]
    assert spec.tokens_per_item == 16 and spec.image_size == 16
    batch = _vlm_batch(model, torch.Generator().manual_seed(0))
    out = model(batch)
    assert torch.isfinite(out.loss)
    # targets after the shift: tokens 8, 9 of r0 and 11 of r1 (first token of each train run follows a prompt token)
    assert int(out.num_target_tokens) == int((batch.labels[:, 1:] != -100).sum())


def test_tiny_valm_multi_modality_forward():
    torch.manual_seed(0)
    model = build_preset("tiny-valm", vocab_size=64)
    audio = model.modality_specs()["audio"]
    assert audio.max_frames == 200 and audio.frames_per_token == 4
    n_audio = audio.num_tokens(16000)  # one second
    assert n_audio == 25
    rows = [
        [("a", [("text", [3], False), ("audio", n_audio), ("vision", 16), ("text", [4, 5], True)])],
        [("b", [("text", [3], False), ("audio", 7), ("text", [4, 6], True)])],
    ]
    batch = build_batch(rows, ["vision", "audio"], random_inputs(model, torch.Generator().manual_seed(1)))
    loss = model(batch).loss
    assert torch.isfinite(loss)


def _grads(module):
    return [p.grad for p in module.parameters()]


def test_gradients_reach_exactly_trainable_modules():
    torch.manual_seed(0)
    model = build_preset("tiny-valm", vocab_size=64)
    apply_freeze(
        model,
        FreezeSpec(llm="trainable", encoders={"vision": BranchFreeze("frozen", "trainable"), "audio": BranchFreeze("trainable", "frozen")}),
    )
    rows = [[("a", [("text", [3], False), ("audio", 10), ("vision", 16), ("text", [4, 5], True)])]]
    batch = build_batch(rows, ["vision", "audio"], random_inputs(model, torch.Generator().manual_seed(1)))
    model(batch).loss.backward()
    assert all(g is None for g in _grads(model.encoders["vision"].encoder))
    assert all(g is not None for g in _grads(model.encoders["vision"].projector))
    # the audio encoder trains through a frozen projector
    assert all(g is None for g in _grads(model.encoders["audio"].projector))
    assert any(g is not None and g.abs().sum() > 0 for g in _grads(model.encoders["audio"].encoder))
    assert all(g is not None for g in _grads(model.llm))


def test_frozen_llm_and_lora():
    torch.manual_seed(0)
    model = build_preset("tiny-vlm", vocab_size=64)
    apply_freeze(model, FreezeSpec(llm="lora"))
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n or n.startswith("encoders.vision.projector") for n in trainable)
    batch = _vlm_batch(model, torch.Generator().manual_seed(0))
    model(batch).loss.backward()
    lora_grads = [p.grad for n, p in model.named_parameters() if "lora_B" in n]
    assert lora_grads and all(g is not None for g in lora_grads)
    frozen = [p.grad for n, p in model.llm.named_parameters() if "lora_" not in n]
    assert all(g is None for g in frozen)

    model2 = build_preset("tiny-vlm", vocab_size=64)
    apply_freeze(model2, FreezeSpec(llm="frozen", encoders={"vision": BranchFreeze("frozen", "frozen")}))
    assert model2.trainable_parameters() == []


def test_freeze_spec_errors():
    model = build_preset("tiny-vlm", vocab_size=64)
    with pytest.raises(ValueError, match="audio"):
        apply_freeze(model, FreezeSpec(encoders={"audio": BranchFreeze()}))
    with pytest.raises(ValueError, match="llm must be"):
        apply_freeze(model, FreezeSpec(llm="sometimes"))
    spec = FreezeSpec.from_dict({"llm": "lora", "encoders": {"vision": {"encoder": "trainable"}}, "lora": {"r": 4, "target_modules": ["q_proj"]}})
    assert spec.encoders["vision"].projector == "trainable" and spec.lora.target_modules == ("q_proj",)


def test_placeholder_feature_mismatch_names_sample_and_counts():
    torch.manual_seed(0)
    model = build_preset("tiny-vlm", vocab_size=64)
    batch = _vlm_batch(model, torch.Generator().manual_seed(0))
    batch.item_tokens["vision"][1] = 12  # r1's first image now claims 12 tokens, 16 are in the sequence
    with pytest.raises(ValueError, match=r"sample 'r1': 32 vision placeholder tokens .* but 28 vision feature tokens"):
        model(batch)


def test_llm_only_composition_equals_bare_hf_loss():
    torch.manual_seed(0)
    llm = AutoModelForCausalLM.from_config(_tiny_llama(64))
    llm.eval()
    ids = torch.randint(1, 64, (2, 12))
    reference = llm(input_ids=ids, labels=ids).loss
    composed = MultimodalLM(llm, {})
    composed.eval()
    rows = [[(f"s{r}", [("text", ids[r].tolist(), True)])] for r in range(2)]
    batch = build_batch(rows, [], lambda m, n: {})
    # the first token of a sample never carries a label; HF's shift drops it too
    assert torch.allclose(composed(batch).loss, reference, atol=1e-5)


def test_projector_size_errors():
    model = build_preset("tiny-vlm", vocab_size=64)
    enc = model.encoders["vision"].encoder
    with pytest.raises(ValueError, match="does not match the encoder's hidden size 64"):
        ModalityEncoder(enc, Projector("mlp", 32, 128))
    with pytest.raises(ValueError, match="hidden size is 128"):
        MultimodalLM(model.llm, {"vision": ModalityEncoder(enc, Projector("linear", 64, 96))})
    with pytest.raises(ValueError, match="unknown projector kind"):
        ModalityEncoder.build(enc, 128, projector="qformer")


def test_token_reduction_modes():
    x = torch.arange(2 * 16 * 3, dtype=torch.float32).view(2, 16, 3)
    shuffle = Projector("linear", 3, 5, token_reduction=2, reduction_mode="shuffle")
    assert shuffle.reducer(x).shape == (2, 4, 12)
    # the first merged token is the top-left 2×2 neighbourhood of the 4×4 grid: tokens 0, 1, 4, 5
    assert torch.equal(shuffle.reducer(x)[0, 0], torch.cat([x[0, i] for i in (0, 1, 4, 5)]))
    avg = Projector("mlp", 3, 5, token_reduction=2, reduction_mode="avg")
    assert torch.allclose(avg.reducer(x)[0, 0], x[0, [0, 1, 4, 5]].mean(0))
    seq = Projector("linear", 3, 5, token_reduction=4, grid=False)
    assert seq(x).shape == (2, 4, 5)
    with pytest.raises(ValueError, match="square token grid"):
        shuffle.reducer(torch.zeros(1, 15, 3))
    model = build_preset("tiny-vlm", vocab_size=64)
    reduced = ModalityEncoder.build(model.encoders["vision"].encoder, 128, token_reduction=2)
    assert reduced.input_spec.tokens_per_item == 4
    assert reduced(pixel_values=torch.randn(3, 3, 16, 16)).shape == (3, 4, 128)


class _ConvEncoder(nn.Module):
    """A plain (non-HF) encoder: (N, 1, 8, 8) → (N, 4, 32)."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 32, kernel_size=4, stride=4)

    def forward(self, inputs):
        return self.conv(inputs).flatten(2).transpose(1, 2)


def test_custom_module_encoder():
    torch.manual_seed(0)
    llm = AutoModelForCausalLM.from_config(_tiny_llama(64))
    spec = TensorInputSpec(tokens_per_item=4, input_name="inputs", placeholder="<sensor>", item_shape=(1, 8, 8))
    enc = ModalityEncoder.build(_ConvEncoder(), 128, encoder_hidden_size=32, projector="linear", input_spec=spec)
    model = MultimodalLM(llm, {"sensor": enc})
    rows = [[("x", [("text", [1, 2], False), ("sensor", 4), ("text", [3, 4], True)])]]
    batch = build_batch(rows, ["sensor"], lambda m, n: {"inputs": torch.randn(n, 1, 8, 8)})
    model(batch).loss.backward()
    assert enc.encoder.conv.weight.grad is not None
    with pytest.raises(ValueError, match="pass encoder_hidden_size"):
        ModalityEncoder.build(_ConvEncoder(), 128, input_spec=spec)


def test_idle_encoders_run_on_text_only_batches():
    torch.manual_seed(0)
    model = build_preset("tiny-vlm", vocab_size=64)
    model.run_idle_encoders = True
    rows = [[("t", [("text", [1, 2, 3, 4], True)])]]
    batch = build_batch(rows, ["vision"], random_inputs(model))
    model(batch).loss.backward()
    grads = [p.grad for p in model.encoders["vision"].projector.parameters()]
    # the projector took part in the graph (so a sharded module's collectives would run) with zero effect
    assert all(g is not None and torch.count_nonzero(g) == 0 for g in grads)


def test_generate_left_aligns_padded_rows():
    torch.manual_seed(0)
    model = build_preset("tiny-vlm", vocab_size=64)
    model.eval()
    rows = [
        [("a", [("text", [5, 6], False), ("vision", 16), ("text", [7], False)])],
        [("b", [("text", [5, 6, 9, 9, 9], False), ("vision", 16), ("text", [7], False)])],
    ]
    batch = build_batch(rows, ["vision"], random_inputs(model, torch.Generator().manual_seed(2)))
    out = model.generate(batch, max_new_tokens=3)
    assert [len(o) for o in out] == [3, 3]
    # the first generated token of each row is the argmax after its own last prompt token
    logits = model(batch, return_logits=True).logits
    last = (batch.sample_ids >= 0).sum(1) - 1
    expected = logits[torch.arange(2), last].argmax(-1).tolist()
    assert [o[0] for o in out] == expected

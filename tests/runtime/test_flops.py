import pytest
import torch

from amylum.models import BranchFreeze, FreezeSpec, apply_freeze, build_preset
from amylum.runtime.flops import measure_step_flops, peak_tflops
from runtime_standins import vision_batch


@pytest.fixture(scope="module")
def forward_only():
    """Per-item / per-token forward FLOPs, from a model with everything frozen but the projector."""
    model = build_preset("tiny-vlm", vocab_size=64, seed=0)
    batch = vision_batch(model, 64)
    return model, batch


def _flops(model, batch, llm, encoder, projector):
    apply_freeze(model, FreezeSpec(llm=llm, encoders={"vision": BranchFreeze(encoder=encoder, projector=projector)}))
    return measure_step_flops(model, batch)


def test_encoder_and_llm_flops_follow_what_trains(forward_only):
    model, batch = forward_only
    all_train = _flops(model, batch, "trainable", "trainable", "trainable")
    frozen_enc = _flops(model, batch, "trainable", "frozen", "trainable")
    frozen_llm = _flops(model, batch, "frozen", "frozen", "trainable")
    assert all_train.llm_per_token > 0 and all_train.encoder_per_item["vision"] > 0
    # A frozen encoder fed by pixels runs forward only: its cost drops (projector still trains).
    assert frozen_enc.encoder_per_item["vision"] < 0.6 * all_train.encoder_per_item["vision"]
    # A frozen LLM under a trainable projector still back-propagates (input grads): 2x forward, not 3x.
    assert frozen_llm.llm_per_token == pytest.approx(all_train.llm_per_token * 2 / 3, rel=0.02)
    llm, enc = all_train.step(100, {"vision": 2})
    assert llm == pytest.approx(100 * all_train.llm_per_token) and enc == pytest.approx(2 * all_train.encoder_per_item["vision"])


def test_measuring_does_not_move_the_rng(forward_only):
    model, batch = forward_only
    torch.manual_seed(3)
    expected = torch.rand(2)
    torch.manual_seed(3)
    measure_step_flops(model, batch)
    assert torch.equal(torch.rand(2), expected)


def test_no_peak_on_cpu():
    assert peak_tflops(torch.device("cpu")) is None
    assert peak_tflops(torch.device("cpu"), override=100.0) == 100.0


@pytest.mark.parametrize("backend", ["flex", "flex-flash"])
def test_flex_models_are_counted_and_keep_their_backend(forward_only, backend):
    """FlopCounterMode cannot run FlexAttention: the count uses the dense reference attention
    (same FLOPs as a reference model's) and the model gets its own backend back."""
    ref_model, batch = forward_only
    apply_freeze(ref_model, FreezeSpec(llm="trainable", encoders={"vision": BranchFreeze("trainable", "trainable")}))
    model = build_preset("tiny-vlm", vocab_size=64, seed=0, attention_backend=backend)
    assert measure_step_flops(model, batch) == measure_step_flops(ref_model, batch)
    assert model.attention_backend == backend
    assert model.llm.config._attn_implementation != "amylum_reference"

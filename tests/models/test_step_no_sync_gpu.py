"""A training step on a GPU never waits for the device: a host-device sync would let the GPU idle
while the host prepares the next launches (bench/gpu_profile.py prints where they happen)."""

import sys
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))


@pytest.mark.parametrize("mask_mode", ["multimodal", "causal"])
def test_training_step_has_no_host_device_sync(mask_mode):
    from gpu_step import PRESETS, Shape, build, make_batch

    _, rows, prompt, text, images, audio_s, _ = PRESETS["tiny"]
    model = build("tiny-vlm", "cuda", torch.bfloat16, "fast", mask_mode, True, 0)
    model.validate_inputs = False  # validation reads the device by design; the fast path turns it off
    opt = torch.optim.AdamW(model.trainable_parameters(), lr=1e-4, fused=True)
    batch = make_batch(model, Shape(rows, prompt, text, images, 0.0), 64, 0).to("cuda", non_blocking=True)

    def step():
        model(batch).loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    step()  # first step: lazy initialisation (optimizer state, compiled kernels) may sync
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        step()
    finally:
        torch.cuda.set_sync_debug_mode("default")

"""GraphedTrainStep with a real CUDA graph: compiled blocks, FlexAttention's block mask and the fused
loss captured, replayed over new batches of one layout, trains like the eager step."""

import sys
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))


def _setup(backend):
    from gpu_step import PRESETS, Shape, build, make_batch

    from amylum.parallel.blocks import compile_blocks

    _, rows, prompt, text, images, _, _ = PRESETS["tiny"]
    model = build("tiny-vlm", "cuda", torch.bfloat16, backend, "multimodal", True, 0)
    model.validate_inputs = False
    compile_blocks(model)
    opt = torch.optim.AdamW(model.trainable_parameters(), lr=1e-3, fused=True, capturable=True)
    batches = [make_batch(model, Shape(rows, prompt, text, images, 0.0), 64, seed) for seed in range(7)]
    return model, opt, batches


@pytest.mark.parametrize("backend", ["flex", "reference"])
def test_graph_replays_train_like_eager_steps(backend):
    from amylum.runtime.graph_step import GraphedTrainStep

    model, opt, batches = _setup(backend)
    eager = []
    for batch in batches:
        loss = model(batch.to("cuda", non_blocking=True)).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        eager.append(loss.detach())

    model, opt, batches = _setup(backend)
    step = GraphedTrainStep(lambda b: model(b).loss, opt, warmup=3)
    graphed = [step(batch) for batch in batches]
    assert step.captured
    eager, graphed = torch.stack(eager).float().cpu(), torch.stack(graphed).float().cpu()
    torch.testing.assert_close(graphed, eager, rtol=2e-2, atol=2e-2)
    assert not torch.equal(graphed[4], graphed[5])  # replays saw new batches


def test_a_host_copy_inside_a_capture_is_refused():
    from amylum.device_copy import to_device

    graph = torch.cuda.CUDAGraph()
    with pytest.raises(RuntimeError, match="inside a CUDA graph capture"):
        with torch.cuda.graph(graph):
            to_device(torch.ones(3), "cuda")

"""compile_blocks: every block compiled; a frozen encoder on a GPU compiled whole as a CUDA graph."""

import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from amylum.models import BranchFreeze, FreezeSpec, apply_freeze, build_preset
from amylum.parallel.blocks import compile_blocks, component_blocks


def _tiny(device="cpu", dtype=torch.float32):
    model = build_preset("tiny-vlm", device=device, dtype=dtype, attention_backend="flex", seed=0)
    apply_freeze(model, FreezeSpec(llm="trainable", encoders={m: BranchFreeze("frozen", "trainable") for m in model.encoders}))
    return model


def test_cpu_blocks_compile_one_by_one_without_cuda_graphs(monkeypatch):
    seen = []
    monkeypatch.setattr(nn.Module, "compile", lambda self, **kw: seen.append((type(self).__name__, kw)))
    model = _tiny()
    n = compile_blocks(model, frozen_graphs=True)
    blocks = sum(len(b) for _, b in component_blocks(model))
    assert n == len(seen) == blocks  # frozen encoder, but on the CPU: its blocks, no graphs
    assert all("mode" not in kw for _, kw in seen)
    seen.clear()
    compile_blocks(model, mode="max-autotune-no-cudagraphs")
    assert {kw["mode"] for _, kw in seen} == {"max-autotune-no-cudagraphs"}  # the caller's mode wins


def test_a_graphed_encoder_copies_its_output_and_refuses_other_options(monkeypatch):
    """Only an encoder replayed as a graph copies its output (the next replay overwrites it); the
    graph's mode cannot take the matmul-merging option, so asking for both is an error."""
    import amylum.parallel.blocks as blocks

    seen = []
    monkeypatch.setattr(nn.Module, "compile", lambda self, **kw: seen.append((type(self).__name__, kw)))
    monkeypatch.setattr(blocks, "_frozen_cuda_encoder",  # stands in for a frozen encoder on a GPU
                        lambda model, name: model.encoders[name].encoder if name in model.encoders else None)
    model = _tiny()
    assert not any(branch.output_in_graph_pool for branch in model.encoders.values())
    compile_blocks(model, frozen_graphs=True)
    assert all(branch.output_in_graph_pool for branch in model.encoders.values())
    assert [kw for _, kw in seen if kw.get("mode") == "reduce-overhead"]
    with pytest.raises(ValueError, match="choose one of them"):
        compile_blocks(_tiny(), frozen_graphs=True, merge_matmuls=True)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_frozen_encoder_graph_trains_like_eager():
    """Three training steps with the frozen encoder replayed as a CUDA graph equal eager ones."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
    from gpu_step import PRESETS, Shape, make_batch

    _, rows, prompt, text, images, _, _ = PRESETS["tiny"]
    losses = {}
    for graphs in (False, True):
        model = _tiny("cuda", torch.bfloat16)
        if graphs:
            assert compile_blocks(model, components=tuple(model.encoders), frozen_graphs=True) == len(model.encoders)
        opt = torch.optim.AdamW(model.trainable_parameters(), lr=1e-3, fused=True)
        batch = make_batch(model, Shape(rows, prompt, text, images, 0.0), 64, 0).to("cuda")
        got = []
        for _ in range(3):
            loss = model(batch).loss
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            got.append(loss.item())
        losses[graphs] = got
    torch.testing.assert_close(torch.tensor(losses[True]), torch.tensor(losses[False]), rtol=2e-2, atol=0)

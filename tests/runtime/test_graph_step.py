"""GraphedTrainStep's plumbing on a CPU: each call is one step, new batches reach the static inputs
(masks included), mismatching batches and non-capturable optimizers are refused.

A CPU has no CUDA graphs; the tests capture with a stand-in that re-runs the step eagerly on
the static inputs at every "replay", with gradients cleared first (a replayed graph writes them,
it does not accumulate). A real graph on a GPU: test_graph_step_gpu.py."""

import sys
from pathlib import Path

import pytest
import torch

from amylum.attention.mask import mask_spec
from amylum.models import BranchFreeze, FreezeSpec, apply_freeze, build_preset
from amylum.runtime.graph_step import GraphedTrainStep, batch_signature

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "models"))

from gpu_step import PRESETS, Shape, make_batch  # noqa: E402
from model_batches import build_batch, random_inputs  # noqa: E402


def _rerun_capture(optimizer):
    def capture(step):
        def replay():
            optimizer.zero_grad(set_to_none=True)
            step()
        return replay
    return capture


def _model():
    model = build_preset("tiny-vlm", vocab_size=64, seed=0)
    apply_freeze(model, FreezeSpec(llm="trainable", encoders={"vision": BranchFreeze("frozen", "trainable")}))
    return model


def _batches(model, n, text=24):
    _, rows, prompt, _, images, _, _ = PRESETS["tiny"]
    return [make_batch(model, Shape(rows, prompt, text, images, 0.0), 64, seed) for seed in range(n)]


def test_replayed_steps_train_like_the_eager_loop():
    """Five steps over five different batches of one layout: the same losses and weights as a
    plain loop (a replay that kept reading the first batch would drift at once)."""
    batches = _batches(_model(), 5)
    eager_model = _model()
    eager_opt = torch.optim.SGD(eager_model.trainable_parameters(), lr=0.1, momentum=0.9)
    expected = []
    for batch in batches:
        loss = eager_model(batch).loss
        loss.backward()
        eager_opt.step()
        eager_opt.zero_grad(set_to_none=True)
        expected.append(loss.item())

    model = _model()
    opt = torch.optim.SGD(model.trainable_parameters(), lr=0.1, momentum=0.9)
    step = GraphedTrainStep(lambda b: model(b).loss, opt, warmup=2, capture=_rerun_capture(opt))
    got = [step(batch).item() for batch in batches]
    assert step.captured and step.steps == 5
    assert got == pytest.approx(expected, rel=1e-5, abs=1e-6)
    assert got[2] != pytest.approx(got[3])
    for a, b in zip(model.trainable_parameters(), eager_model.trainable_parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def _fingerprint(spec):
    return (spec.hi * (1 + torch.arange(spec.seq_len))).sum()


def test_mask_specs_of_each_new_batch_reach_the_static_inputs():
    """The step reads the batch's kept mask spec; after capture each call's spec must be the new
    batch's, built on the host, not the captured one's."""
    model = _model()
    make = lambda layout: build_batch(  # noqa: E731
        [[("r0", layout)]], ["vision"], random_inputs(model, torch.Generator().manual_seed(0)))
    first = make([("text", [5, 6, 7, 8], True), ("vision", 4), ("text", [9, 10], True)])
    moved = make([("text", [5, 6], True), ("vision", 4), ("text", [9, 10, 11, 12], True)])
    weight = torch.nn.Parameter(torch.ones(()))
    opt = torch.optim.SGD([weight], lr=0.0)

    def loss_fn(batch):
        if "multimodal" not in batch.index.mask_specs:  # what attention_inputs keeps on a GPU
            batch.index.mask_specs["multimodal"] = mask_spec(batch, "multimodal")
        return weight * _fingerprint(batch.index.mask_specs["multimodal"])

    step = GraphedTrainStep(loss_fn, opt, warmup=1, capture=_rerun_capture(opt))
    step(first)
    step(make([("text", [5, 6, 7, 8], True), ("vision", 4), ("text", [9, 10], True)]))
    assert step.captured
    assert step(moved).item() == _fingerprint(mask_spec(moved, "multimodal")).item()
    assert _fingerprint(mask_spec(moved, "multimodal")) != _fingerprint(mask_spec(first, "multimodal"))


def test_a_batch_of_another_layout_is_refused_by_name():
    model = _model()
    opt = torch.optim.SGD(model.trainable_parameters(), lr=0.1)
    step = GraphedTrainStep(lambda b: model(b).loss, opt, warmup=1, capture=_rerun_capture(opt))
    step(_batches(model, 1)[0])
    step(_batches(model, 1)[0])
    longer = _batches(model, 1, text=28)[0]
    with pytest.raises(ValueError, match=r"captured with \(index\.target_labels: captured \(\(48,\)"):
        step(longer)
    assert step.steps == 2  # the refused batch was not a step


def test_signature_names_what_a_graph_freezes():
    batch = _batches(_model(), 1)[0].with_index()
    sig = batch_signature(batch)
    assert sig["item_tokens"] == {"vision": tuple(batch.item_tokens["vision"])}
    assert sig["index.target_positions"][0] == tuple(batch.index.target_positions.shape)


def test_non_capturable_optimizers_are_refused():
    params = [torch.nn.Parameter(torch.zeros(2))]
    with pytest.raises(ValueError, match="capturable=True"):
        GraphedTrainStep(lambda b: params[0].sum(), torch.optim.AdamW(params, lr=1e-3))
    with pytest.raises(ValueError, match="warmup"):
        GraphedTrainStep(lambda b: params[0].sum(), torch.optim.SGD(params, lr=1e-3), warmup=0)


def test_a_device_batch_without_host_index_is_refused():
    model = _model()
    opt = torch.optim.SGD(model.trainable_parameters(), lr=0.1)
    step = GraphedTrainStep(lambda b: model(b).loss, opt, warmup=1, capture=_rerun_capture(opt))
    on_device = _batches(model, 1)[0].to("meta")  # "meta" stands in for a GPU here
    on_device.index = None
    with pytest.raises(ValueError, match="host-derived index"):
        step(on_device)


def test_the_callers_batches_are_not_overwritten():
    model = _model()
    batches = _batches(model, 3)
    before = [b.input_ids.clone() for b in batches]
    opt = torch.optim.SGD(model.trainable_parameters(), lr=0.1)
    step = GraphedTrainStep(lambda b: model(b).loss, opt, warmup=1, capture=_rerun_capture(opt))
    for batch in batches:
        step(batch)
    assert all(torch.equal(b.input_ids, x) for b, x in zip(batches, before))

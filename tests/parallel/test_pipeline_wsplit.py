"""Split backward (zero-bubble W): B gives input gradients only, W then the parameter gradients."""

import copy

import pytest
import torch
from torch import nn

import wsplit_workers
from amylum.parallel.pipeline import PipelineExecutor
from amylum.parallel.pipeline.split_backward import backward_input, backward_weight
from amylum.planner.schedule import Action
from dist_harness import run_world


class _Block(nn.Module):
    """A stage-like block: a parameter used on the input path (fc1, norm), one used off it (bias
    added to the output, which no input reaches), and a view as the output."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2, self.norm = nn.Linear(6, 8), nn.Linear(8, 6), nn.LayerNorm(8)
        self.offset = nn.Parameter(torch.randn(6))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.fc2(torch.relu(self.norm(self.fc1(x)))) + self.offset.tanh()
        return h.view(-1)


def _fused_grads(block, x, grad):
    """Input and parameter gradients of the ordinary (fused) backward."""
    x = x.clone().requires_grad_(True)
    block(x).backward(grad)
    return x.grad, {n: p.grad.clone() for n, p in block.named_parameters()}


def test_b_gives_input_grads_only_and_w_fills_weights():
    torch.manual_seed(0)
    block = _Block()
    ref = copy.deepcopy(block)
    x, grad = torch.randn(3, 6), torch.randn(18)
    ref_dx, ref_grads = _fused_grads(ref, x, grad)

    x = x.clone().requires_grad_(True)
    weights = list(block.parameters())
    kept = backward_input(block(x), grad, [x], weights)
    assert torch.allclose(x.grad, ref_dx, atol=1e-6)
    assert all(p.grad is None for p in weights), "B must leave parameter gradients to W"
    assert kept.param_groups, "B should keep the join-node gradients for W"

    backward_weight(kept, weights)
    for n, p in block.named_parameters():
        assert p.grad is not None, f"W left {n} without a gradient"
        assert torch.allclose(p.grad, ref_grads[n], atol=1e-6), n


def test_w_accumulates_over_interleaved_microbatches():
    """Two microbatches' B then both W (the zero-bubble order): the sum of both fused backwards."""
    torch.manual_seed(1)
    block = _Block()
    ref = copy.deepcopy(block)
    xs, grads = [torch.randn(3, 6) for _ in range(2)], [torch.randn(18) for _ in range(2)]
    for x, g in zip(xs, grads):
        _fused_grads(ref, x, g)
    weights = list(block.parameters())
    kept = []
    for x, g in zip(xs, grads):
        x = x.clone().requires_grad_(True)
        kept.append(backward_input(block(x), g, [x], weights))
    for k in kept:
        backward_weight(k, weights)
    for (n, p), q in zip(block.named_parameters(), ref.parameters()):
        assert torch.allclose(p.grad, q.grad, atol=1e-6), n


def test_first_stage_defers_the_whole_backward_to_w():
    """No input reaches the output (a first stage): B computes nothing, W the parameter grads."""
    torch.manual_seed(2)
    block = _Block()
    ref = copy.deepcopy(block)
    x, grad = torch.randn(3, 6), torch.randn(18)
    ref(x).backward(grad)
    weights = list(block.parameters())
    kept = backward_input(block(x), grad, [], weights)
    assert all(p.grad is None for p in weights)
    backward_weight(kept, weights)
    for (n, p), q in zip(block.named_parameters(), ref.parameters()):
        assert torch.allclose(p.grad, q.grad, atol=1e-6), n


def test_frozen_block_b_alone_gives_the_input_grad():
    torch.manual_seed(3)
    block = _Block().requires_grad_(False)
    x, grad = torch.randn(3, 6, requires_grad=True), torch.randn(18)
    ref_x = x.detach().clone().requires_grad_(True)
    block(ref_x).backward(grad)
    kept = backward_input(block(x), grad, [x], [])
    backward_weight(kept, [])  # nothing to do, and nothing breaks
    assert torch.allclose(x.grad, ref_x.grad, atol=1e-6)


class _Scale(torch.autograd.Function):
    """A custom autograd function joining the input path and a parameter (as the fused loss does)."""

    @staticmethod
    def forward(ctx, x, w):
        ctx.save_for_backward(x, w)
        return x * w

    @staticmethod
    def backward(ctx, grad):
        x, w = ctx.saved_tensors
        return grad * w, (grad * x).sum(0)


def test_custom_function_output_node_survives_until_w():
    """The output is a custom function's (as the fused loss is) and its node joins a parameter:
    W must still reach that node after B handed the output to torch (it failed on torch 2.11)."""
    torch.manual_seed(4)
    block, scale = _Block(), nn.Parameter(torch.randn(6))
    ref_block, ref_scale = copy.deepcopy(block), nn.Parameter(scale.detach().clone())
    x, grad = torch.randn(3, 6), torch.randn(3, 6)
    ref_x = x.clone().requires_grad_(True)
    _Scale.apply(ref_block(ref_x).view(3, 6), ref_scale).backward(grad)

    x.requires_grad_(True)
    weights = [scale, *block.parameters()]
    kept = backward_input(_Scale.apply(block(x).view(3, 6), scale), grad, [x], weights)
    assert all(p.grad is None for p in weights), "B must leave parameter gradients to W"
    backward_weight(kept, weights)
    assert torch.allclose(x.grad, ref_x.grad, atol=1e-6)
    assert torch.allclose(scale.grad, ref_scale.grad, atol=1e-6)
    for (n, p), q in zip(block.named_parameters(), ref_block.parameters()):
        assert torch.allclose(p.grad, q.grad, atol=1e-6), n


class _CountBackward(torch.autograd.Function):
    """Identity whose backward appends to ``calls``: counts how often autograd runs through it."""

    @staticmethod
    def forward(ctx, x, calls):
        ctx.calls = calls
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        ctx.calls.append(1)
        return grad, None


class _TiedStage(nn.Module):
    """A parameter used at two depths of the input path, as the tied embedding of an LLM stage
    that embeds received features and computes the loss: ``tied`` is added to the input (the
    lookup's join node) and scales the top (the head's join: a custom function like the fused loss,
    or a built-in multiply). ``calls`` counts backward runs through the layers in between."""

    def __init__(self, custom: bool) -> None:
        super().__init__()
        self.custom, self.calls = custom, []
        self.fc = nn.Linear(6, 6)
        self.tied = nn.Parameter(torch.randn(6))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = _CountBackward.apply(self.fc(torch.tanh(x + self.tied)), self.calls)
        top = _Scale.apply(h, self.tied) if self.custom else h * self.tied
        return top.square().sum()


@pytest.mark.parametrize("custom", [True, False], ids=["custom_function_head", "builtin_head"])
def test_parameter_joining_the_input_path_twice_splits_exactly(custom):
    """Such a parameter's W failed with "Trying to backward through the graph a second time":
    torch's W ran autograd from the upper join through the layers below it, freeing the graph of
    the other parameters' W. W must start below the upper join and run nothing on the input path."""
    torch.manual_seed(6)
    stage = _TiedStage(custom)
    ref = copy.deepcopy(stage)
    x = torch.randn(3, 6)
    ref_x = x.clone().requires_grad_(True)
    ref(ref_x).backward()

    x.requires_grad_(True)
    weights = list(stage.parameters())
    kept = backward_input(stage(x), None, [x], weights)
    assert torch.allclose(x.grad, ref_x.grad, atol=1e-6)
    assert all(p.grad is None for p in weights), "B must leave parameter gradients to W"
    assert len(stage.calls) == 1
    backward_weight(kept, weights)
    assert len(stage.calls) == 1, "W ran the input path's backward again"
    for (n, p), q in zip(stage.named_parameters(), ref.parameters()):
        assert torch.allclose(p.grad, q.grad, atol=1e-6), n


def test_single_llm_stage_after_encoder_stages_splits_exactly():
    """Modality parallel with one LLM stage, whose tied embedding joins its input path at the
    lookup and at the fused loss: that stage's executor on its zero-bubble list (W deferred), in
    one process with the encoder features made beforehand, against a fused backward."""
    diffs = wsplit_workers.single_llm_stage_split()
    worst = max(diffs, key=diffs.get)
    assert diffs[worst] < wsplit_workers.TOL, f"{worst}: {diffs[worst]}"


def test_only_deferred_w_splits_the_backward():
    from amylum.parallel.pipeline.executor import _split_microbatches

    def acts(ops):
        return [Action(op[0], 0, int(op[1:])) for op in ops.split()]

    assert _split_microbatches(acts("F0 F1 B0 B1 W0 W1")) == {0, 1}
    assert _split_microbatches(acts("F0 B0 W0 F1 B1 F2 W1 B2 W2")) == {1}  # W0, W2 right behind their B
    assert _split_microbatches(acts("F0 B0 F1 B1")) == set()


def test_executor_rejects_w_before_its_b():
    actions = [Action("F", 0, 0), Action("W", 0, 0), Action("B", 0, 0)]
    with pytest.raises(ValueError, match="comes before its B"):
        PipelineExecutor(0, nn.Linear(2, 2), actions, {0: 0})


class _LossStage(nn.Module):
    """A one-stage pipeline with the executor's stage signature; the microbatch is a tensor."""

    def __init__(self) -> None:
        super().__init__()
        self.block = _Block()

    def forward(self, batch, received, num_items_in_batch=None):
        return self.block(batch).square().sum()


@pytest.mark.parametrize("ops", ["F0 F1 B0 B1 W0 W1", "F0 B0 F1 B1", "F0 B0 W0 F1 B1 W1"],
                         ids=["deferred_w", "no_w_fused", "w_behind_b_fused"])
def test_executor_runs_w_where_listed_and_fuses_elsewhere(ops):
    torch.manual_seed(5)
    stage = _LossStage()
    ref = copy.deepcopy(stage)
    mbs = [torch.randn(3, 6), torch.randn(3, 6)]
    sum(ref(mb, {}) for mb in mbs).backward()
    actions = [Action(op[0], 0, int(op[1:])) for op in ops.split()]
    loss = PipelineExecutor(0, stage, actions, {0: 0}).step(mbs)
    assert torch.allclose(loss, sum(ref(mb, {}) for mb in mbs).detach())
    for (n, p), q in zip(stage.named_parameters(), ref.parameters()):
        assert torch.allclose(p.grad, q.grad, atol=1e-6), n


def test_zero_bubble_pipeline_matches_single_process():
    """3-stage chain (vision stage → LLM layer 0 + audio → LLM layer 1) on the planner's
    zero-bubble lists, every stage splitting B and W and deferring W past later work, against
    one process: loss and every gradient over 3 AdamW steps."""
    worst = run_world(wsplit_workers.zero_bubble_worker, 3)
    assert max(worst) < wsplit_workers.TOL

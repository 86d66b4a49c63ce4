"""A stage's backward in two parts: B (input gradients) now, W (weight gradients) later.

Zero-bubble schedules send a stage's input gradient upstream as soon as possible and run its
weight gradient in what would otherwise be idle time. B runs autograd from the stage output to
the stage inputs only, and records, at each graph node where a parameter's path joins the input
path, the gradient that flowed in; W starts autograd from those nodes with the recorded
gradients and ends at the parameters. So neither the forward nor the part of the backward shared
by both (from the output down to those nodes) runs twice, and W accumulates exactly the
gradients the fused backward would, up to float summation order.

The graph surgery is PyTorch's own (``torch.distributed.pipelining._backward``, the functions
its ``ZeroBubble`` schedules use); this module adapts them to the executor's cases:
- no stage input reaches the output (the first stage, or a microbatch whose received features
  go unused): there is no input gradient, and B's split would capture nothing for W, so B does
  nothing and W runs the whole (parameter-only) backward, as torch's first stage does;
- the graph must outlive B: torch detaches the outputs it is given in place, which frees the
  nodes that only the output owned. A custom ``autograd.Function`` node (the loss stage's fused
  cross-entropy) at a join point is then lost, because its Python handle, which B keeps for W,
  does not own it (torch 2.11 fails W with "Attribute '_input_metadata' is invalid"). So B hands
  torch a clone and keeps the real output until W; the nodes above the join points, all that
  this keeps in addition, are few (a layer's last op already joins its weights). The clone also
  suits outputs that are views, which refuse an in-place detach.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch.distributed.pipelining._backward import stage_backward_input, stage_backward_weight


@dataclass
class DeferredWeightGrad:
    """What W needs for one microbatch after its B.

    Either the parameter groups that B's split captured (``param_groups``) and the output that
    owns their graph (``graph_owner``), or, when no input reaches the output, the output and its
    gradient for a whole backward (``output``, ``grad``).
    """

    param_groups: list = field(default_factory=list)
    graph_owner: torch.Tensor | None = None
    output: torch.Tensor | None = None
    grad: torch.Tensor | None = None


def _grad_node(t: torch.Tensor):
    """The autograd node a gradient for ``t`` arrives at: its grad_fn, or a leaf's accumulator."""
    if t.grad_fn is not None:
        return t.grad_fn
    return t.view_as(t).grad_fn.next_functions[0][0]  # a leaf's AccumulateGrad, created on demand


def _graph_nodes(output: torch.Tensor):
    """Every autograd node reachable from ``output``, each once."""
    if output.grad_fn is None:
        return
    seen, todo = {output.grad_fn}, [output.grad_fn]
    while todo:
        node = todo.pop()
        yield node
        for nxt, _ in node.next_functions:
            if nxt is not None and nxt not in seen:
                seen.add(nxt)
                todo.append(nxt)


def reaches_any(output: torch.Tensor, inputs: list[torch.Tensor]) -> bool:
    """Whether ``output``'s autograd graph reaches any of ``inputs`` (all requiring grad)."""
    targets = {_grad_node(t) for t in inputs}
    return bool(targets) and any(node in targets for node in _graph_nodes(output))


def backward_input(
    output: torch.Tensor, grad: torch.Tensor | None, inputs: list[torch.Tensor], weights: list[torch.Tensor]
) -> DeferredWeightGrad:
    """B: accumulate ``output``'s gradient into ``inputs[i].grad`` only; return what W needs.

    ``grad`` is the gradient of a non-scalar output (None for a loss); ``inputs`` are the stage's
    received tensors that require grad; ``weights`` its trainable parameters. No parameter's
    ``.grad`` changes here.
    """
    live = [t for t in inputs if t.requires_grad]
    if not reaches_any(output, live):
        return DeferredWeightGrad(output=output, grad=grad)
    grads = None if grad is None else [grad]
    # torch detaches what it is given; the real output keeps the graph alive until W (see above)
    _, param_groups = stage_backward_input([output.clone()], grads, live, iter(weights))
    # A group whose join nodes received no gradient (their outputs unused) contributes nothing.
    kept = [g for g in param_groups if g.get("grads") is not None]
    return DeferredWeightGrad(param_groups=kept, graph_owner=output)


def backward_weight(deferred: DeferredWeightGrad, weights: list[torch.Tensor]) -> None:
    """W: accumulate the parameter gradients of the microbatch whose B returned ``deferred``."""
    if deferred.output is not None:
        torch.autograd.backward(deferred.output, deferred.grad)
        return
    if deferred.param_groups:
        stage_backward_weight(iter(weights), deferred.param_groups)

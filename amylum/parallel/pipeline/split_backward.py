"""A stage's backward in two parts: B (input gradients) now, W (weight gradients) later.

Zero-bubble schedules send a stage's input gradient upstream as soon as possible and run its
weight gradient in what would otherwise be idle time. B runs autograd from the stage output to
the stage inputs only, and records, at each graph node where a parameter's path joins the input
path (a join node), the gradient that flowed in; W starts autograd from those nodes with the
recorded gradients and ends at the parameters. So neither the forward nor the part of the
backward shared by both (from the output down to those nodes) runs twice, and W accumulates
exactly the gradients the fused backward would, up to float summation order.

The split of the graph is PyTorch's own (``torch.distributed.pipelining._backward``: the
parameter groups its ``ZeroBubble`` schedules use, each a set of parameters and the join nodes
that lead to them); B and W are written here for the executor's cases:
- no stage input reaches the output (the first stage, or a microbatch whose received features
  go unused): there is no input gradient, and B's split would capture nothing for W, so B does
  nothing and W runs the whole (parameter-only) backward, as torch's first stage does;
- the graph must outlive B: torch's B detaches the outputs it is given in place, which frees the
  nodes only the output owned, among them a custom ``autograd.Function`` node (the loss stage's
  fused cross-entropy) at a join point, whose Python handle does not own it (torch 2.11 failed W
  with "Attribute '_input_metadata' is invalid"). B here detaches nothing: the output is kept
  until W, and with it the nodes above the join points, which are few (a layer's last op
  already joins its weights);
- a parameter used at two depths of the input path: the tied embedding on a stage that both
  embeds received features and computes the loss (an LLM stage that is first and last, after
  encoder stages). Its group has two join nodes, the fused loss (joins the head) and the
  scatter of the features into the token embeddings (joins the lookup), and the input path
  leads from the first to the second. Torch's W starts at both and runs autograd to the
  parameter, which from the loss node is the stage's whole input backward again (every layer
  down to the scatter, context-parallel collectives included), freeing on the way the nodes the
  other groups' W start from: their W then fails with "Trying to backward through the graph a
  second time". With the graph retained it would be exact but redo B. So W starts at such an
  upper join node's parameter-side edges instead. Their gradients come from B where the node is
  a custom Function's, which computes all its outputs anyway; a post hook keeps them (for the
  fused loss, a head-sized gradient held from B to W). A built-in node computes only what B
  needs, so W calls it on the gradients B recorded at it. Nothing on the input path runs again.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch.autograd.function import BackwardCFunction
from torch.autograd.graph import GradientEdge
from torch.distributed.pipelining._backward import construct_reverse_graph, get_param_groups, reverse_closure


@dataclass
class _WeightGroup:
    """One parameter group's W: autograd from ``starts`` (edges, each with its gradient) to the
    ``params`` (AccumulateGrad nodes), after calling each built-in upper join node in ``calls``
    (``(node, its recorded gradients, indices of its parameter-side edges)``) for more starts."""

    params: list
    starts: list = field(default_factory=list)
    calls: list = field(default_factory=list)


@dataclass
class DeferredWeightGrad:
    """What W needs for one microbatch after its B.

    Either the parameter groups that B's split captured (``param_groups``) and the output that
    owns their graph (``graph_owner``), or, when no input reaches the output, the output and its
    gradient for a whole backward (``output``, ``grad``).
    """

    param_groups: list[_WeightGroup] = field(default_factory=list)
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


def _upper_joins(joins: list, reverse_edges) -> set:
    """The join nodes of one group from which the input path leads on to another of its joins:
    those reached when walking up the graph (towards the output) from the group's joins."""
    if len(joins) < 2:  # the common case: a parameter used once has one join node
        return set()
    members, upper, seen = set(joins), set(), set()
    todo = [parent for j in joins for parent in reverse_edges[j]]
    while todo:
        node = todo.pop()
        if node in seen:
            continue
        seen.add(node)
        if node in members:
            upper.add(node)
        todo.extend(reverse_edges[node])
    return upper


def _as_passed_down(grad: torch.Tensor, meta) -> torch.Tensor:
    """A node's output as the engine passes it down an edge (its ``validate_outputs``), which a
    direct call of the node skips: summed over broadcast dimensions, in the receiving dtype."""
    if grad.shape != meta.shape:
        grad = grad.sum_to_size(meta.shape)
    return grad if grad.dtype == meta.dtype else grad.to(meta.dtype)


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
    input_nodes = [_grad_node(t) for t in live]
    reverse_edges = construct_reverse_graph([output.grad_fn])
    groups = get_param_groups(input_nodes, [_grad_node(w) for w in weights], reverse_edges)
    uppers = [_upper_joins(list(g["intermediates"]), reverse_edges) for g in groups]
    # Edges of an upper join that lead to parameters, not further down the input path.
    input_side = reverse_closure(input_nodes, set(), reverse_edges)[0] if any(uppers) else set()
    param_edges = {
        node: [k for k, (child, _) in enumerate(node.next_functions) if child is not None and child not in input_side]
        for upper in uppers for node in upper
    }

    recorded: dict = {}  # join node → the gradients that reached it (its grad_outputs)
    produced: dict = {}  # custom Function upper join → its gradients on its parameter-side edges

    def record(node):
        return lambda grad_outputs: recorded.__setitem__(node, grad_outputs)

    def keep(node, edges):
        return lambda grad_inputs, _: produced.__setitem__(node, {k: grad_inputs[k] for k in edges})

    handles = []
    try:
        for g in groups:
            handles += [node.register_prehook(record(node)) for node in g["intermediates"]]
        # A custom Function's backward computes every gradient it can (its needs_input_grad is
        # fixed at forward), so B already has the parameter-side ones: a post hook keeps them.
        # W could not call it as it calls a built-in node: its Python ``apply`` answers per
        # forward argument, not per graph edge.
        handles += [node.register_hook(keep(node, edges)) for node, edges in param_edges.items()
                    if isinstance(node, BackwardCFunction)]
        grads = None if grad is None else [grad]
        dinputs = torch.autograd.grad([output], live, grads, retain_graph=True, allow_unused=True)
    finally:
        for h in handles:
            h.remove()
    for t, d in zip(live, dinputs):
        if d is None:
            continue
        if t.grad is None:
            t.grad = d
        else:
            t.grad += d

    kept = []
    for g, upper in zip(groups, uppers):
        group = _WeightGroup(params=list(g["params"]))
        for node in g["intermediates"]:
            grad_outputs = recorded.get(node)
            if grad_outputs is None:  # its outputs were unused: nothing reached it
                continue
            # W starts at a join node, except at an upper one, where it would run the input path
            # below: there it starts at the edges to the parameters, with that node's gradients.
            if node not in upper:
                group.starts += [(GradientEdge(node, i), d) for i, d in enumerate(grad_outputs) if d is not None]
            elif node in produced:
                group.starts += [(GradientEdge(*node.next_functions[k]), d)
                                 for k, d in produced[node].items() if d is not None]
            else:  # a built-in node skipped them in B (not needed there); W calls it for them
                group.calls.append((node, grad_outputs, param_edges[node]))
        if group.starts or group.calls:
            kept.append(group)
    return DeferredWeightGrad(param_groups=kept, graph_owner=output)


def backward_weight(deferred: DeferredWeightGrad, weights: list[torch.Tensor]) -> None:
    """W: accumulate the parameter gradients of the microbatch whose B returned ``deferred``."""
    if deferred.output is not None:
        torch.autograd.backward(deferred.output, deferred.grad)
        return
    by_node = {_grad_node(w): w for w in weights}
    for group in deferred.param_groups:
        starts = list(group.starts)
        for node, grad_outputs, edges in group.calls:
            # A built-in node called directly computes all its outputs (the engine's B computed
            # only those on the input path); no_grad as in the engine, whose backward records nothing.
            with torch.no_grad():
                grad_inputs = node(*grad_outputs)
            for k in edges:
                if grad_inputs[k] is not None:
                    child, nr = node.next_functions[k]
                    starts.append((GradientEdge(child, nr), _as_passed_down(grad_inputs[k], child._input_metadata[nr])))
        if not starts:
            continue
        # Groups share no node below their starts (torch merges groups that share a join node),
        # so freeing this group's part of the graph leaves the others' intact.
        edges, grads = zip(*starts)
        dweights = torch.autograd.grad(edges, [GradientEdge(p, 0) for p in group.params], grads, allow_unused=True)
        for p, dw in zip(group.params, dweights):
            if dw is None:
                continue
            w = by_node[p]
            if w.grad is None:
                w.grad = dw
            else:
                w.grad += dw

"""Merge matmuls that share an operand into one matmul (an inductor post-grad graph pass).

Why: a GQA attention block projects its input three times, and the key and value projections
are narrow (Qwen2-1.5B: 1,536 → 256 columns). On an H100 those GEMMs ran at 340-430 TFLOP/s
against 690-825 for the wide ones (bench/gpu_profile.py, docs/BENCHMARKS.md issue 5), and each
costs its own launches in forward and backward. One GEMM over the concatenated weights
([K, 1536 + 256 + 256]) fills the GPU, and so does one GEMM for the three weight gradients.

The pass sees the compiled block's aten graph, not a model family's code, so it applies to any
block whose matmuls share an input:

* ``mm(A, B_i)`` / ``addmm(bias_i, A, B_i)`` with the same ``A`` → one (add)mm with the ``B_i``
  (and biases) concatenated along columns; each old result becomes a column slice;
* ``mm(A_i, X)`` with the same ``X`` (weight gradients: ``dY_iᵀ X``) → one mm with the ``A_i``
  stacked by rows; each old result becomes a row slice;
* ``Σᵢ mm(A_i, B_i)`` (the input gradient of those projections, ``Σᵢ dY_i W_i``) → one mm of
  ``[A_1 … A_n]`` and ``[B_1; …; B_n]``.

A group is merged only when one of its matmuls is narrow (fewer than ``NARROW`` output columns,
rows or, for a sum, contraction length): wide GEMMs already fill the GPU, and concatenating
their large weights would copy more memory than the merge saves (the MLP's gate and up
projections are left alone). Merging keeps the graph's order: the merged matmul is placed
after all its inputs and before the first use of any of its results, or the group is skipped;
so is a group whose concatenated operand would have rows that are not 16-byte aligned.
"""

from __future__ import annotations

from collections import defaultdict

import torch
from torch._inductor.custom_graph_pass import CustomGraphPass, get_hash_for_files

aten = torch.ops.aten
# Columns (or rows) below which a projection GEMM under-filled an H100 in the VLM step: Qwen2's
# 256-wide k/v ran at 340-430 TFLOP/s, SigLIP's 1,152-wide q/k/v (2,916 tokens) at about 360.
NARROW = 2048


def _val(node):
    return node.meta.get("val") if isinstance(node, torch.fx.Node) else None


def _fake(node_or_value):
    return _val(node_or_value) if isinstance(node_or_value, torch.fx.Node) else node_or_value


def _new_node(graph: torch.fx.Graph, target, args):
    """A call_function node with its fake value computed (inductor's lowering reads ``meta["val"]``)."""
    node = graph.call_function(target, args)
    fake_args = torch.utils._pytree.tree_map(_fake, args)
    mode = torch._guards.detect_fake_mode(torch.utils._pytree.tree_leaves(fake_args))
    if mode is not None:
        with mode:
            node.meta["val"] = target(*fake_args)
    return node


def _concatenated(graph: torch.fx.Graph, parts: list, dim: int):
    """A node of ``cat(parts, dim)``, or None (nothing added) when the result's rows would not be
    16-byte aligned: cuBLAS then falls back to a slow kernel (an sm80 one on an H100, measured
    in the VLM step, issue 5). Transposed views (``Wᵢᵀ``, ``dYᵢᵀ``) are concatenated as stored,
    along the other dimension, and the result viewed transposed: a copy of plain rows whose
    length is the weight's or the concatenated width, never the token count (7,076 in the VLM
    step, which is not a multiple of 8)."""
    sources = [_transposed_source(p) for p in parts]
    transposed = all(s is not None for s in sources)
    items, cat_dim = (sources, 1 - dim) if transposed else (parts, dim)
    values = [_val(i) for i in items]
    if any(v is None or v.dim() != 2 for v in values):
        return None
    width = values[0].shape[1] if cat_dim == 0 else sum(v.shape[1] for v in values)
    if width % max(1, 16 // values[0].element_size()):
        return None
    cat = _new_node(graph, aten.cat.default, (items, cat_dim))
    return _new_node(graph, aten.permute.default, (cat, [1, 0])) if transposed else cat


def _transposed_source(node):
    """``x`` when ``node`` is the transpose of a 2-D ``x`` (``permute(x, [1, 0])`` or ``t(x)``)."""
    if not isinstance(node, torch.fx.Node) or node.op != "call_function":
        return None
    if node.target is aten.t.default or (node.target is aten.permute.default and list(node.args[1]) == [1, 0]):
        source = node.args[0]
        return source if _val(source) is not None and _val(source).dim() == 2 else None
    return None


_VIEWS = (aten.permute.default, aten.t.default, aten.view.default, aten.reshape.default, aten.expand.default)


def _available_before(first: torch.fx.Node, inputs: list, order: dict) -> bool:
    """Whether every input exists before ``first`` (the earliest matmul of a group), moving a
    later one there when it is a view of values that do (a weight's transpose, typically)."""
    for node in inputs:
        if not isinstance(node, torch.fx.Node) or order[node] < order[first]:
            continue
        args = [a for a in node.all_input_nodes]
        if node.op != "call_function" or node.target not in _VIEWS or any(order[a] >= order[first] for a in args):
            return False
    for node in sorted((n for n in inputs if isinstance(n, torch.fx.Node) and order[n] > order[first]),
                       key=lambda n: order[n]):
        first.prepend(node)
    return True


def _merge(graph: torch.fx.Graph, order: dict, members: list, shared_first: bool) -> bool:
    """Replace ``members`` (matmuls sharing one operand) with one matmul and slices of it."""
    with_bias = members[0].target is aten.addmm.default
    if any((m.target is aten.addmm.default) != with_bias or m.kwargs for m in members):
        return False
    others = [m.args[2] if with_bias else (m.args[1] if shared_first else m.args[0]) for m in members]
    biases = [m.args[0] for m in members] if with_bias else []
    shared = members[0].args[1] if with_bias else members[0].args[0 if shared_first else 1]
    values = [_val(o) for o in others] + [_val(b) for b in biases] + [_val(shared)]
    if any(v is None for v in values) or any(v.dim() != 2 for v in values[: len(others)]):
        return False
    if with_bias and any(_val(b).dim() != 1 for b in biases):
        return False
    widths = [_val(o).shape[1] if shared_first else _val(o).shape[0] for o in others]
    if min(widths) >= NARROW or len({_val(o).dtype for o in others}) != 1:
        return False
    # Where the merged matmul goes: before the group's first matmul when every input exists by
    # then (the forward's projections), else after its last input if no result is used earlier
    # (the weight gradients, whose inputs arrive one by one); otherwise merging would reorder the graph.
    inputs = [*others, *biases, shared]
    first = min(members, key=lambda n: order[n])
    last_input = max(inputs, key=lambda n: order[n])
    users = [u for m in members for u in m.users]
    if _available_before(first, inputs, order):
        point = first
    elif not users or order[last_input] < min(order[u] for u in users):
        point = last_input.next
    else:
        return False
    with graph.inserting_before(point):
        cat = _concatenated(graph, others, 1 if shared_first else 0)
        if cat is None:
            return False
        if with_bias:
            bias = _new_node(graph, aten.cat.default, (biases, 0))
            merged = _new_node(graph, aten.addmm.default, (bias, shared, cat))
        else:
            merged = _new_node(graph, aten.mm.default, (shared, cat) if shared_first else (cat, shared))
    start, anchor = 0, merged
    for member, width in zip(members, widths):
        with graph.inserting_after(anchor):
            piece = _new_node(graph, aten.slice.Tensor, (merged, 1 if shared_first else 0, start, start + width))
        member.replace_all_uses_with(piece)
        graph.erase_node(member)
        start, anchor = start + width, piece
    return True


def _sum_leaves(node: torch.fx.Node, leaves: list, inner: list) -> bool:
    """Collect the matmuls summed by the ``add`` tree under ``node`` (each through at most one
    view); False if a part of the tree is used elsewhere or is something else."""
    if node.op == "call_function" and node.target is aten.add.Tensor and len(node.args) == 2 and not node.kwargs:
        if not all(isinstance(a, torch.fx.Node) for a in node.args):
            return False
        inner.append(node)
        for arg in node.args:
            if len(arg.users) != 1 or not _sum_leaves(arg, leaves, inner):
                return False
        return True
    view = None
    if node.op == "call_function" and node.target in (aten.view.default, aten.reshape.default):
        view, node = node, node.args[0]
        if len(node.users) != 1:
            return False
    if node.op == "call_function" and node.target is aten.mm.default:
        leaves.append((view, node))
        return True
    return False


def _merge_sum(graph: torch.fx.Graph, root: torch.fx.Node) -> bool:
    """Σᵢ Aᵢ Bᵢ (an ``add`` tree over matmuls: an input gradient of projections that share an
    input) → [A₁ … Aₙ] [B₁; …; Bₙ], one matmul whose contraction covers all of them."""
    leaves, inner = [], []
    if not _sum_leaves(root, leaves, inner) or len(leaves) < 2:
        return False
    views = [v for v, _ in leaves]
    mms = [m for _, m in leaves]
    out_shapes = {tuple(_val(m).shape) for m in mms}
    view_shapes = {tuple(v.args[1]) if v is not None else None for v in views}
    if len(out_shapes) != 1 or len(view_shapes) != 1 or any(_val(m) is None for m in mms):
        return False
    inner_dims = [_val(m.args[0]).shape[1] for m in mms]
    if min(inner_dims) >= NARROW or len({_val(m).dtype for m in mms}) != 1:
        return False
    with graph.inserting_before(root):
        lhs = _concatenated(graph, [m.args[0] for m in mms], 1)
        rhs = _concatenated(graph, [m.args[1] for m in mms], 0) if lhs is not None else None
        if rhs is None:
            return False
        merged = _new_node(graph, aten.mm.default, (lhs, rhs))
        view = views[0]
        result = _new_node(graph, view.target, (merged, *view.args[1:])) if view is not None else merged
    root.replace_all_uses_with(result)
    for node in [*inner, *(v for v in views if v is not None), *mms]:
        graph.erase_node(node)
    return True


def _operand_key(node):
    """What makes two matmul operands the same tensor: the node itself, or for a reshape/view the
    viewed node and the shape. An inference graph (a frozen encoder under no_grad) keeps one
    reshape node per projection of the same input; a training graph's were already made one."""
    if isinstance(node, torch.fx.Node) and node.op == "call_function" and node.target in (
            aten.view.default, aten.reshape.default, aten._unsafe_view.default) and not node.kwargs:
        base, shape = node.args
        return ("view", base, tuple(shape) if isinstance(shape, (list, tuple)) else shape)
    return node


def merge_shared_operand_matmuls(graph: torch.fx.Graph) -> int:
    """Merge the groups of matmuls in ``graph`` that share an operand, and sums of matmuls over
    projections of one input; returns the groups merged."""
    merged = 0
    roots = [n for n in graph.nodes if n.op == "call_function" and n.target is aten.add.Tensor
             and all(u.target is not aten.add.Tensor for u in n.users)]  # the tops of add trees
    for root in roots:
        if _merge_sum(graph, root):
            merged += 1
    for shared_first in (True, False):
        order = {n: i for i, n in enumerate(graph.nodes)}
        groups: dict[tuple, list] = defaultdict(list)
        for node in graph.nodes:
            if node.op != "call_function":
                continue
            if node.target is aten.mm.default:
                groups[("mm", _operand_key(node.args[0 if shared_first else 1]))].append(node)
            elif node.target is aten.addmm.default and shared_first:
                groups[("addmm", _operand_key(node.args[1]))].append(node)
        for members in groups.values():
            if len(members) > 1 and _merge(graph, order, members, shared_first):
                merged += 1
                order = {n: i for i, n in enumerate(graph.nodes)}
    if merged:
        _share_identical_concatenations(graph)
        graph.lint()
    return merged


def _share_identical_concatenations(graph: torch.fx.Graph) -> int:
    """Make later ``cat`` nodes of the same parts (same order, same dimension) use the first one.

    A GQA block's backward concatenates dq, dk and dv twice, once for the merged weight gradient
    and once for the merged input gradient; inductor wrote both copies (two [7,076 × 2,048]
    buffers per block in the VLM step, read from the codegen on an H100). The first node precedes
    the later one, hence all of its users, so the graph's order stays valid."""
    first: dict[tuple, torch.fx.Node] = {}
    shared = 0
    for node in list(graph.nodes):
        if node.op != "call_function" or node.target is not aten.cat.default or node.kwargs:
            continue
        parts, dim = node.args[0], node.args[1] if len(node.args) > 1 else 0
        key = (tuple(parts), dim)
        if key in first:
            node.replace_all_uses_with(first[key])
            graph.erase_node(node)
            shared += 1
        else:
            first[key] = node
    return shared


class MergeSharedOperandMatmuls(CustomGraphPass):
    """The pass in the form inductor takes (``options={"post_grad_custom_post_pass": ...}``); its
    cache key is this file's content, so compiled code is rebuilt when the pass changes."""

    def __call__(self, graph: torch.fx.Graph) -> None:
        merge_shared_operand_matmuls(graph)

    def uuid(self) -> bytes:
        return get_hash_for_files((__file__,))

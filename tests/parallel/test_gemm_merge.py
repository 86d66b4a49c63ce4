"""The matmul-merging graph pass: on a compiled Qwen2 block (CPU inductor) it merges the q/k/v
projections and their weight gradients, and the block computes what the eager one does."""

import copy

import pytest
import torch
from transformers import Qwen2Config
from transformers.models.qwen2.modeling_qwen2 import Qwen2DecoderLayer, Qwen2RotaryEmbedding

from amylum.parallel.gemm_merge import MergeSharedOperandMatmuls, merge_shared_operand_matmuls

aten = torch.ops.aten


class _Counting(MergeSharedOperandMatmuls):
    def __init__(self):
        self.merged, self.matmuls, self.cats = [], [], []

    def __call__(self, graph):
        self.merged.append(merge_shared_operand_matmuls(graph))
        self.matmuls.append(sum(n.target in (aten.mm.default, aten.addmm.default) for n in graph.nodes))
        self.cats.append([(tuple(n.args[0]), n.args[1]) for n in graph.nodes if n.target is aten.cat.default])


def _layer():
    torch.manual_seed(0)
    cfg = Qwen2Config(hidden_size=64, intermediate_size=2304, num_attention_heads=4, num_key_value_heads=2,
                      num_hidden_layers=1, vocab_size=100)
    cfg._attn_implementation = "sdpa"
    return Qwen2DecoderLayer(cfg, 0), Qwen2RotaryEmbedding(cfg)


def _run(layer, rope, x):
    x = x.clone().requires_grad_(True)
    pos = torch.arange(x.shape[1])[None].expand(x.shape[0], -1)
    out = layer(x, attention_mask=None, position_ids=pos, position_embeddings=rope(x, pos))
    out = out[0] if isinstance(out, tuple) else out
    (out * torch.linspace(-1, 1, out.numel()).view_as(out)).sum().backward()
    return out.detach(), x.grad, {n: p.grad for n, p in layer.named_parameters()}


def test_qkv_projections_and_their_gradients_merge_and_agree():
    layer, rope = _layer()
    compiled = copy.deepcopy(layer)
    counting = _Counting()
    # no cache: a compiled graph from an earlier run would skip the pass this test counts
    compiled.compile(options={"post_grad_custom_post_pass": counting, "fx_graph_cache": False})
    x = torch.randn(2, 16, 64)
    want = _run(layer, rope, x)
    got = _run(compiled, rope, x)
    # forward: q/k/v (narrow) merge, gate/up (2,304 wide) do not; backward: the q/k/v weight
    # gradients merge, and so do the three products summed into their input's gradient
    assert counting.merged == [1, 2]
    assert counting.matmuls[0] == 7 - 2
    assert counting.matmuls[1] == 14 - 4
    # the weight gradient and the input gradient read one concatenation of dq, dk and dv
    backward_cats = counting.cats[1]
    assert len(backward_cats) == len(set(backward_cats))
    assert sum(len(parts) == 3 and dim == 1 for parts, dim in backward_cats) == 2  # [dq dk dv] and [Wᵀ …]
    torch.testing.assert_close(got[0], want[0], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(got[1], want[1], rtol=1e-4, atol=1e-5)
    for name in want[2]:
        torch.testing.assert_close(got[2][name], want[2][name], rtol=1e-4, atol=1e-5, msg=name)


def test_a_group_whose_input_comes_after_a_result_is_used_is_left_alone():
    def f(x, w1, w2):
        a = x @ w1
        return x @ (w2 + a.sum())  # w2's operand depends on the first product

    gm = torch.fx.experimental.proxy_tensor.make_fx(f)(torch.randn(4, 8), torch.randn(8, 3), torch.randn(8, 3))
    assert merge_shared_operand_matmuls(gm.graph) == 0


def test_merged_graph_computes_the_same_products():
    def f(x, w1, w2, w3):
        return x @ w1, x @ w2, (x @ w3).relu()

    args = (torch.randn(5, 8), torch.randn(8, 4), torch.randn(8, 300), torch.randn(8, 8))
    gm = torch.fx.experimental.proxy_tensor.make_fx(f, tracing_mode="fake")(*args)
    assert merge_shared_operand_matmuls(gm.graph) == 1
    gm.recompile()
    assert sum(n.target is aten.mm.default for n in gm.graph.nodes) == 1
    for got, want in zip(gm(*args), f(*args)):
        torch.testing.assert_close(got, want)


def test_weight_gradients_concatenate_untransposed_and_misaligned_rows_are_refused():
    """dWᵢ = dYᵢᵀ X: the dYᵢ are concatenated as stored ([T, ΣN], then viewed transposed), so the
    GEMM's rows stay 16-byte aligned whatever the token count T; a plain concatenation of
    operands whose rows would not be aligned is not made."""
    def grads(dy1, dy2, x):
        return dy1.t() @ x, dy2.t() @ x

    args = (torch.randn(7, 8), torch.randn(7, 24), torch.randn(7, 16))  # T = 7 tokens
    gm = torch.fx.experimental.proxy_tensor.make_fx(grads, tracing_mode="fake")(*args)
    assert merge_shared_operand_matmuls(gm.graph) == 1
    gm.recompile()
    cats = [n for n in gm.graph.nodes if n.target is aten.cat.default]
    assert len(cats) == 1 and cats[0].args[1] == 1  # [T, 8 + 24], not [8 + 24, T]
    for got, want in zip(gm(*args), grads(*args)):
        torch.testing.assert_close(got, want)

    def rows(a1, a2, x):  # operands that are not transposes: concatenated by rows of 7 elements
        return a1 @ x, a2 @ x

    args = (torch.randn(3, 7, dtype=torch.bfloat16), torch.randn(5, 7, dtype=torch.bfloat16),
            torch.randn(7, 16, dtype=torch.bfloat16))
    gm = torch.fx.experimental.proxy_tensor.make_fx(rows, tracing_mode="fake")(*args)
    assert merge_shared_operand_matmuls(gm.graph) == 0


def test_projections_through_separate_reshapes_of_one_input_merge():
    """An inference graph (a frozen encoder under no_grad) reshapes the input once per projection."""
    def f(x, w1, b1, w2, b2, w3):
        return (torch.addmm(b1, x.reshape(10, 8), w1), torch.addmm(b2, x.reshape(10, 8), w2),
                torch.addmm(b2, x.reshape(5, 16), w3))  # another shape: not the same operand

    args = (torch.randn(2, 5, 8), torch.randn(8, 4), torch.randn(4), torch.randn(8, 4), torch.randn(4),
            torch.randn(16, 4))
    gm = torch.fx.experimental.proxy_tensor.make_fx(f, tracing_mode="fake")(*args)
    views = [n for n in gm.graph.nodes if n.target in (aten.view.default, aten.reshape.default)]
    assert len(views) == 3
    assert merge_shared_operand_matmuls(gm.graph) == 1
    gm.graph.eliminate_dead_code()
    gm.recompile()
    assert sum(n.target is aten.addmm.default for n in gm.graph.nodes) == 2
    for got, want in zip(gm(*args), f(*args)):
        torch.testing.assert_close(got, want)

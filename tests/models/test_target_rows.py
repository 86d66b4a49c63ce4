"""The last block's MLP on target rows only (amylum/models/target_rows.py): same loss, same gradients."""

import copy

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from amylum.models import MultimodalLM, build_preset
from amylum.parallel.blocks import checkpoint_blocks, find_layer_list
from model_batches import build_batch, random_inputs

ROWS = [
    [("a", [("text", [5, 6], False), ("vision", 16), ("text", [7, 8, 9, 10], True)])],
    [("b", [("text", [11], False), ("vision", 16), ("text", [12, 13], True)]),
     ("c", [("text", [14, 15, 16], True)])],
]


def _model_and_batch(seed=0):
    torch.manual_seed(seed)
    model = build_preset("tiny-vlm", vocab_size=64)
    batch = build_batch(ROWS, ["vision"], random_inputs(model, torch.Generator().manual_seed(seed)))
    return model, batch


def _loss_and_grads(model, batch, *, pruned: bool):
    model.zero_grad()
    model.last_block_targets_only = pruned
    loss = model(batch).loss
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


class _MatmulRows(TorchDispatchMode):
    """(rows, output columns) of every matmul (also inside compiled code run by aot_eager)."""

    def __init__(self):
        super().__init__()
        self.seen = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func in (torch.ops.aten.mm.default, torch.ops.aten.addmm.default):
            self.seen.add((args[-2].shape[0], args[-1].shape[1]))
        return func(*args, **(kwargs or {}))


def _mlp_rows_seen(model):
    """Records how many rows the last block's MLP computes (at its inner down projection)."""
    seen = []
    down = find_layer_list(model.llm)[-1].mlp.down_proj
    handle = down.register_forward_pre_hook(lambda m, args: seen.append(args[0].reshape(-1, args[0].shape[-1]).shape[0]))
    return seen, handle


def test_pruned_last_block_gives_the_same_loss_and_gradients():
    model, batch = _model_and_batch()
    seen, handle = _mlp_rows_seen(model)
    full_loss, full = _loss_and_grads(model, batch, pruned=False)
    pruned_loss, pruned = _loss_and_grads(model, batch, pruned=True)
    handle.remove()
    targets = int((batch.labels[:, 1:] != -100).sum())
    assert seen == [batch.input_ids.numel(), targets]  # the second forward ran the MLP on targets only
    assert targets < batch.input_ids.numel()
    torch.testing.assert_close(pruned_loss, full_loss, rtol=1e-6, atol=1e-6)
    assert full.keys() == pruned.keys()
    for name in full:
        torch.testing.assert_close(pruned[name], full[name], rtol=1e-5, atol=1e-6, msg=name)


def test_rows_are_restricted_only_inside_the_loss_forward():
    model, batch = _model_and_batch()
    seen, handle = _mlp_rows_seen(model)
    embeds = model.embed(batch)
    states = model.decode(embeds, batch)  # generation, pipeline stages and CP shards call decode directly
    handle.remove()
    assert seen == [batch.input_ids.numel()] and states.shape[:2] == batch.input_ids.shape
    assert model._target_rows.rows is None


def test_a_checkpointed_last_block_is_not_pruned():
    """Checkpointing recomputes the block in backward, after the rows are gone: no pruning there."""
    model, batch = _model_and_batch()
    _loss_and_grads(model, batch, pruned=False)
    reference = [p.grad.clone() for p in model.llm.parameters()]
    checkpoint_blocks(model, every=1)
    seen, handle = _mlp_rows_seen(model)
    _loss_and_grads(model, batch, pruned=True)
    handle.remove()
    assert seen[0] == batch.input_ids.numel()
    for want, p in zip(reference, model.llm.parameters()):  # parameter names changed with the wrapper
        torch.testing.assert_close(p.grad, want, rtol=1e-5, atol=1e-6)


def test_a_copied_model_prunes_its_own_mlp():
    model, batch = _model_and_batch()
    twin = copy.deepcopy(model)
    assert twin._target_rows.mlp is find_layer_list(twin.llm)[-1].mlp
    assert twin.state_dict().keys() == model.state_dict().keys()
    seen, handle = _mlp_rows_seen(twin)
    loss, _ = _loss_and_grads(twin, batch, pruned=True)
    handle.remove()
    ref, _ = _loss_and_grads(model, batch, pruned=False)
    torch.testing.assert_close(loss, ref)
    assert seen == [int((batch.labels[:, 1:] != -100).sum())]


def test_compiled_last_block_prunes_and_follows_new_target_counts():
    """dynamo traces the restricted forward inside a compiled block; other target counts recompile it."""
    model, batch = _model_and_batch()
    ref_loss, ref = _loss_and_grads(model, batch, pruned=False)
    find_layer_list(model.llm)[-1].compile(backend="aot_eager")
    with _MatmulRows() as rows:
        loss, grads = _loss_and_grads(model, batch, pruned=True)
    targets, width = int((batch.labels[:, 1:] != -100).sum()), model.llm.config.intermediate_size
    assert (targets, width) in rows.seen  # the compiled block's gate/up projections ran on the target rows
    torch.testing.assert_close(loss, ref_loss, rtol=1e-6, atol=1e-6)
    for name in ref:
        torch.testing.assert_close(grads[name], ref[name], rtol=1e-5, atol=1e-6, msg=name)
    other = build_batch(ROWS[:1], ["vision"], random_inputs(model, torch.Generator().manual_seed(3)))
    model.last_block_targets_only = False
    want = model(other).loss
    model.last_block_targets_only = True
    torch.testing.assert_close(model(other).loss, want, rtol=1e-6, atol=1e-6)


def test_an_mlp_returning_a_tuple_is_a_clear_error():
    model, batch = _model_and_batch()

    class TupleMLP(torch.nn.Module):  # an MoE-style block returning (states, router logits)
        def forward(self, x):
            return x, None

    find_layer_list(model.llm)[-1].mlp = TupleMLP()
    rebuilt = MultimodalLM(model.llm, dict(model.encoders), attention_backend="reference")
    with pytest.raises(RuntimeError, match="last_block_targets_only=false"):
        rebuilt(batch)
    assert rebuilt._target_rows.rows is None  # the scope was left

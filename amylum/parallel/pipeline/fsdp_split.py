"""FSDP2 under a W split: every gradient reduction of the step waits for its last W.

FSDP2 reduces a sharded module's gradients from autograd hooks: when the backward reaches the
module's inputs, and when the backward call ends. A split backward defeats both: B reaches the
inputs before any weight gradient exists, and W (autograd from B's join nodes to the
parameters) runs no FSDP hook at all. So a stage that splits does what torch's own pipelining
does for FSDP (``torch.distributed.pipelining.stage``: ``backward_maybe_with_nosync`` and
``perform_reduce_grad``):

- its parameters stay unsharded from the step's first forward to the step's end
  (``set_reshard_after_forward(False)``, ``set_reshard_after_backward(False)``). The parameters
  that B records for W are then the ones W fills, and the weights saved in the graph stay
  allocated. On a one-rank mesh (dp = 1) this costs no memory; over replicas it holds the
  stage's full weights for the step, as torchtitan does by default under pipelining;
- every backward of the step accumulates without reducing (``set_requires_gradient_sync(False)``);
- after the last W, each parameter group's post-backward runs once with reduction on, then the
  root's end-of-backward callback (waits for the reductions, reshards). That is one
  reduce-scatter per step instead of one per microbatch.

The last step has no public API in FSDP2: it calls the same internals as torch's pipelining,
checked when the executor is built (``check_internals``), with an error naming the torch
version instead of a failure in the middle of a step.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.distributed.fsdp import FSDPModule, fully_shard


def fsdp_roots(module: nn.Module) -> list[FSDPModule]:
    """The outermost FSDP2 modules in ``module`` (each the root of its own FSDP tree)."""
    roots: list[FSDPModule] = []
    inside: set[int] = set()
    for m in module.modules():  # pre-order: a root comes before what it contains
        if id(m) in inside or not isinstance(m, FSDPModule):
            continue
        roots.append(m)
        inside.update(id(sub) for sub in m.modules())
    return roots


def _param_groups(state) -> list:
    # torch 2.13 keeps a list of parameter groups per state; earlier releases one optional group.
    if hasattr(state, "_fsdp_param_groups"):
        return list(state._fsdp_param_groups)
    if hasattr(state, "_fsdp_param_group"):
        group = state._fsdp_param_group
        return [group] if group is not None else []
    raise RuntimeError(f"torch {torch.__version__}: FSDP2's state has no parameter groups where the zero-bubble "
                       "W split under FSDP looks for them; run a 1f1b plan instead")


def check_internals() -> None:
    """Raise if this torch lacks the FSDP2 internals that ``reduce_held`` calls."""
    try:
        from torch.distributed.fsdp._fully_shard._fsdp_param_group import FSDPParamGroup
        from torch.distributed.fsdp._fully_shard._fsdp_state import FSDPState
    except ImportError as e:
        missing = [str(e)]
    else:
        missing = [name for owner, name in ((fully_shard, "state"), (FSDPState, "_root_post_backward_final_callback"),
                                            (FSDPParamGroup, "post_backward")) if not hasattr(owner, name)]
    if missing:
        raise RuntimeError(f"torch {torch.__version__}: FSDP2 lacks {missing}, which the zero-bubble W split under "
                           "FSDP needs to reduce gradients after the last W; run a 1f1b plan instead")


def keep_unsharded(roots: list[FSDPModule]) -> None:
    """Once, when the executor is built: parameters stay unsharded through a step's forwards.

    Resharding after a forward would swap the sharded parameters back into the modules: a later
    B would then record parameters that are not in its graph, and W would lose the weight
    gradients without any error (the zero-bubble test in tests/parallel/test_dist_train.py
    fails that way)."""
    check_internals()
    for root in roots:
        root.set_reshard_after_forward(False)


def hold_reduction(roots: list[FSDPModule]) -> None:
    """Before a step's first backward: accumulate gradients, reduce nothing, reshard nothing."""
    for root in roots:
        root.set_requires_gradient_sync(False)
        root.set_reshard_after_backward(False)
        root.set_is_last_backward(False)


def reduce_held(roots: list[FSDPModule]) -> None:
    """After a step's last W: reduce every accumulated gradient once and reshard."""
    for root in roots:
        root.set_requires_gradient_sync(True)
        root.set_reshard_after_backward(True)
        root.set_is_last_backward(True)
        state = fully_shard.state(root)
        for sub in state._state_ctx.all_states:
            for group in _param_groups(sub):
                group.post_backward()
        state._root_post_backward_final_callback()

"""Run any valid action list of the planner (``amylum.planner.schedule``) with point-to-point ops.

Shapes are sent with every message (a small header before the payload), because image and
audio token counts change from one microbatch to the next: nothing is inferred once and
assumed. SENDs are asynchronous and complete by the end of the step; RECVs block, which is
what the planner's validator proves deadlock-free. Gradient flows back only where the action
list sends it: frozen-aware pruning happens in the plan, and the executor follows it.

``B`` and ``W``: where the list has a ``W`` for a microbatch (zero-bubble schedules,
``split_w``), ``B`` computes only the gradient of the stage's received inputs, which is what the
SEND after it carries upstream, and ``W`` later fills the parameter gradients from what ``B``
kept (``split_backward.py``). Where it has none (a stage with nothing trainable, a fused last
stage, 1F1B without split), ``B`` computes both. A stage under FSDP2 that splits keeps its
parameters unsharded for the step and reduces its gradients once, after its last ``W``
(``fsdp_split.py``): FSDP's own reduction runs when the backward reaches a module's inputs, which
in a split backward is before any weight gradient exists.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn

from amylum.data.batch import MultimodalBatch
from .fsdp_split import fsdp_roots, hold_reduction, keep_unsharded, reduce_held
from .split_backward import DeferredWeightGrad, backward_input, backward_weight

_DTYPES = [torch.float32, torch.bfloat16, torch.float16, torch.float64]
_HEADER = 8  # dtype code, ndim, up to 6 dims


def _header(t: torch.Tensor) -> torch.Tensor:
    """dtype code, ndim and shape of ``t``, on ``t``'s device: NCCL sends only device tensors."""
    if t.dim() > _HEADER - 2:
        raise ValueError(f"cannot send a {t.dim()}-D tensor; at most {_HEADER - 2} dims")
    values = [_DTYPES.index(t.dtype), t.dim(), *t.shape] + [0] * (_HEADER - 2 - t.dim())
    return torch.tensor(values, dtype=torch.int64, device=t.device)


class PipelineExecutor:
    """Executes one stage's action list each step.

    Args:
        stage: this rank's stage id; ``module``: its stage module (``build_stage``).
        actions: the stage's action list (``Action(op, stage, mb, peer, data)``).
        stage_ranks: stage id → global rank.
        device: where activations live (CPU for gloo, the rank's GPU for NCCL).
    """

    def __init__(
        self,
        stage: int,
        module: nn.Module,
        actions: list,
        stage_ranks: dict[int, int] | None = None,
        device="cpu",
        tied_group: dist.ProcessGroup | None = None,
        *,
        layout=None,
        rank: int | None = None,
    ):
        """Peers come from ``stage_ranks`` (one rank per stage) or from a ``RuntimeLayout``
        (``amylum.parallel.layout``) and this ``rank``, which also covers TP groups of
        different widths on the two ends of a pipeline edge and CP stages."""
        self.stage, self.module, self.actions = stage, module, actions
        self.tied_group = tied_group
        self.device = torch.device(device)
        if (stage_ranks is None) == (layout is None):
            raise ValueError("pass exactly one of stage_ranks or layout (with rank)")
        if layout is not None and rank is None:
            raise ValueError("a layout needs this process's rank")
        self.stage_ranks, self.layout, self.rank = stage_ranks, layout, rank
        known = set(stage_ranks) if stage_ranks is not None else set(layout.stage_ranks)
        for a in actions:
            if a.stage != stage:
                raise ValueError(f"action {a} belongs to stage {a.stage}, not {stage}")
            if a.op in ("SEND", "RECV") and a.peer not in known:
                raise ValueError(f"action {a} names stage {a.peer}, which has no rank")
        # Inputs need autograd only when a gradient is sent back for them.
        self._grad_peers = {(a.mb, a.peer) for a in actions if a.op == "SEND" and a.data == "grad"}
        self._split_mbs = _split_microbatches(actions)
        # FSDP2 trees of a stage that splits: their reductions wait for the step's last W.
        self._fsdp_roots = fsdp_roots(module) if self._split_mbs else []
        if self._fsdp_roots:
            keep_unsharded(self._fsdp_roots)

    def _srcs(self, peer: int, data: str) -> tuple[int, ...]:
        if self.layout is None:
            return (self.stage_ranks[peer],)
        # Several only for the gradient of an encoder stage that feeds a CP stage: each CP rank
        # sends the gradient of its own tokens' loss, and the sum is the feature gradient.
        return self.layout.recv_sources(self.rank, peer, data)

    def _dsts(self, peer: int, data: str) -> tuple[int, ...]:
        if self.layout is None:
            return (self.stage_ranks[peer],)
        return self.layout.send_to(self.rank, peer, data)

    # -- point to point ------------------------------------------------------------------
    def _recv(self, peer: int, data: str) -> torch.Tensor:
        total = None
        for src in self._srcs(peer, data):
            h = torch.empty(_HEADER, dtype=torch.int64, device=self.device)
            dist.recv(h, src)
            h = h.tolist()  # the shape decides the buffer: one read of the header
            dtype, ndim = _DTYPES[h[0]], h[1]
            buf = torch.empty(h[2 : 2 + ndim], dtype=dtype, device=self.device)
            dist.recv(buf, src)
            total = buf if total is None else total + buf
        return total

    # -- one step -------------------------------------------------------------------------
    def step(self, microbatches: list[MultimodalBatch], num_items_in_batch=None) -> torch.Tensor | None:
        """Run the action list over ``microbatches``; returns the summed loss on the last stage."""
        inputs: dict[tuple[int, int], torch.Tensor] = {}
        outputs: dict[int, torch.Tensor] = {}
        grads: dict[int, torch.Tensor] = {}
        pending: list = []
        keep_alive: list[torch.Tensor] = []  # tensors of in-flight sends
        deferred: dict[int, DeferredWeightGrad] = {}  # B done, W pending
        if self._fsdp_roots:
            hold_reduction(self._fsdp_roots)
        loss_total = None
        for a in self.actions:
            if a.op == "RECV":
                t = self._recv(a.peer, a.data)
                if a.data == "act":
                    if (a.mb, a.peer) in self._grad_peers and t.is_floating_point():
                        t.requires_grad_(True)
                    inputs[(a.mb, a.peer)] = t
                else:
                    grads[a.mb] = grads[a.mb] + t if a.mb in grads else t
            elif a.op == "F":
                received = {p: t for (mb, p), t in inputs.items() if mb == a.mb}
                out = self.module(microbatches[a.mb], received, num_items_in_batch)
                outputs[a.mb] = out
                if out.dim() == 0:
                    loss_total = out.detach() if loss_total is None else loss_total + out.detach()
            elif a.op == "SEND":
                if a.data == "act":
                    t = outputs[a.mb]
                else:
                    x = inputs[(a.mb, a.peer)]
                    t = x.grad if x.grad is not None else torch.zeros_like(x)  # unused input: zero gradient
                t = t.detach().contiguous()
                keep_alive.append(t)
                for dst in self._dsts(a.peer, a.data):
                    pending += [dist.isend(_header(t), dst), dist.isend(t, dst)]
            elif a.op == "B":
                kept = self._backward_input(a.mb, outputs.pop(a.mb), grads.pop(a.mb, None), inputs, self._weights())
                if kept is not None:
                    deferred[a.mb] = kept
            elif a.op == "W":
                if a.mb in deferred:  # absent: B found nothing to differentiate, or B was fused
                    backward_weight(deferred.pop(a.mb), self._weights())
            else:
                raise ValueError(f"unknown action {a}")
        for work in pending:
            work.wait()
        if deferred:
            raise RuntimeError(f"stage {self.stage}: microbatches {sorted(deferred)} ran B but never W")
        if self._fsdp_roots:
            reduce_held(self._fsdp_roots)  # before the tied sum, which adds reduced gradients
        if self.tied_group is not None:
            self._sync_tied()
        return loss_total

    def _weights(self) -> list[torch.Tensor]:
        """The trainable parameters as the graph holds them: read at each B and W, because FSDP
        swaps a module's sharded parameters for unsharded ones when it gathers them."""
        return [p for p in self.module.parameters() if p.requires_grad]

    def _backward_input(self, mb, out, grad, inputs, weights) -> DeferredWeightGrad | None:
        """Run ``B`` for ``mb``: the input gradients, plus the weight gradients unless a ``W``
        follows; returns what that ``W`` needs (None when it has nothing to do)."""
        # An empty message of an idle encoder stage still requires grad: its backward runs the
        # sharded encoder's collectives like its replicas' (DESIGN §4.4).
        if not out.requires_grad:
            return None
        if out.dim() != 0:
            grad = grad.to(out.dtype)
        if mb not in self._split_mbs:
            torch.autograd.backward(out, grad)
            return None
        received = [t for (m, _), t in inputs.items() if m == mb and t.requires_grad]
        return backward_input(out, grad, received, weights)

    def _sync_tied(self) -> None:
        """Sum the tied input-embedding / LM-head gradient of the first and last LLM stages.

        Both stages hold the same tied matrix; each sees only its own use of it (embedding on
        the first, head on the last), and the true gradient is the sum of the two.
        """
        weight = self.module.model.llm.get_input_embeddings().weight
        if weight.grad is None:
            weight.grad = torch.zeros_like(weight)
        grad = weight.grad
        # Under FSDP the gradient is a sharded DTensor; both stages shard it the same way over
        # equally sized data-parallel meshes, so the local shards line up.
        local = grad.to_local() if hasattr(grad, "to_local") else grad
        dist.all_reduce(local, group=self.tied_group)


def _split_microbatches(actions: list) -> set[int]:
    """Microbatches whose weight gradient the list defers to a later ``W`` action; checks each
    ``W`` comes after its ``B``, since it consumes what that ``B`` kept. A ``W`` right behind its
    ``B`` (1F1B with ``split_w``) gains nothing from a split, so that ``B`` stays fused."""
    split, backward_done = set(), set()
    for i, a in enumerate(actions):
        if a.op == "B":
            backward_done.add(a.mb)
        elif a.op == "W":
            if a.mb not in backward_done:
                raise ValueError(f"W of microbatch {a.mb} on stage {a.stage} comes before its B")
            previous = actions[i - 1]
            if not (previous.op == "B" and previous.mb == a.mb):
                split.add(a.mb)
    return split

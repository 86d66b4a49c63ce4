"""Run any valid action list of the planner (``amylum.planner.schedule``) with point-to-point ops.

Shapes are sent with every message (a small header before the payload), because image and
audio token counts change from one microbatch to the next: nothing is inferred once and
assumed. SENDs are asynchronous and complete by the end of the step; RECVs block, which is
what the planner's validator proves deadlock-free. ``W`` actions are accepted and run nothing:
``B`` computes input and weight gradients together (a split-W executor is future work).
Gradient flows back only where the action list sends it: frozen-aware pruning happens in the
plan, and the executor follows it.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn

from amylum.data.batch import MultimodalBatch

_DTYPES = [torch.float32, torch.bfloat16, torch.float16, torch.float64]
_HEADER = 8  # dtype code, ndim, up to 6 dims


def _header(t: torch.Tensor) -> torch.Tensor:
    if t.dim() > _HEADER - 2:
        raise ValueError(f"cannot send a {t.dim()}-D tensor; at most {_HEADER - 2} dims")
    h = torch.zeros(_HEADER, dtype=torch.int64)
    h[0], h[1] = _DTYPES.index(t.dtype), t.dim()
    h[2 : 2 + t.dim()] = torch.tensor(t.shape, dtype=torch.int64)
    return h


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
        different widths on the two ends of a pipeline edge."""
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

    def _src(self, peer: int, data: str) -> int:
        if self.layout is None:
            return self.stage_ranks[peer]
        return self.layout.recv_from(self.rank, peer, data)

    def _dsts(self, peer: int, data: str) -> tuple[int, ...]:
        if self.layout is None:
            return (self.stage_ranks[peer],)
        return self.layout.send_to(self.rank, peer, data)

    # -- point to point ------------------------------------------------------------------
    def _recv(self, peer: int, data: str) -> torch.Tensor:
        src = self._src(peer, data)
        h = torch.empty(_HEADER, dtype=torch.int64)
        dist.recv(h, src)
        dtype, ndim = _DTYPES[int(h[0])], int(h[1])
        buf = torch.empty([int(x) for x in h[2 : 2 + ndim]], dtype=dtype, device=self.device)
        dist.recv(buf, src)
        return buf

    # -- one step -------------------------------------------------------------------------
    def step(self, microbatches: list[MultimodalBatch], num_items_in_batch=None) -> torch.Tensor | None:
        """Run the action list over ``microbatches``; returns the summed loss on the last stage."""
        inputs: dict[tuple[int, int], torch.Tensor] = {}
        outputs: dict[int, torch.Tensor] = {}
        grads: dict[int, torch.Tensor] = {}
        pending: list = []
        keep_alive: list[torch.Tensor] = []  # tensors of in-flight sends
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
                out = outputs.pop(a.mb)
                # An empty message of an idle encoder stage still requires grad: its backward
                # runs the sharded encoder's collectives like its replicas' (DESIGN §4.4).
                if out.requires_grad:
                    if out.dim() == 0:
                        out.backward()
                    else:
                        torch.autograd.backward(out, grads.pop(a.mb).to(out.dtype))
                else:
                    grads.pop(a.mb, None)
            elif a.op == "W":
                pass
            else:
                raise ValueError(f"unknown action {a}")
        for work in pending:
            work.wait()
        if self.tied_group is not None:
            self._sync_tied()
        return loss_total

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

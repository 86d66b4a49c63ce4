"""K/V exchanges for CP attention: every rank's keys, or only the blocks its queries may see.

Both take this rank's K/V (one tensor, K and V concatenated on the last dim, shape
(1, H, n_local, 2D)) and return the keys this rank's queries attend against, in global order,
with the queries' key intervals in *those keys'* coordinates (``lo``/``hi``) and their count
(``kv_len``):

* :class:`AllGatherKV` — one all-gather of the whole sequence (Llama-3 style). Every rank holds
  all N keys; the collective moves each part padded to the largest rank's count.
* :class:`SparseKV` — mask-aware point-to-point exchange. Who sends which of its tokens to whom
  is decided on the host before the step (:func:`sparse_kv_plan`, from the planner's
  ``received_keys``), so a layer runs a fixed list of sends and receives: no data-dependent
  collective inside the model. The backward returns each received token's dK/dV to its owner,
  which adds them to its own.

A query's allowed keys form one interval of global positions, and every key in it is needed,
so it is present among the received keys: in received-key coordinates the interval stays an
interval (``searchsorted``), and the dense or block-sparse mask is built from it unchanged.

Each exchange counts what it moved (:class:`KVTraffic`, per microbatch, travelling with it),
from the tensors it actually received and returned, per layer call.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
import torch.distributed as dist

from amylum.planner.cp_balance import CPAssignment, received_keys

EXCHANGES = ("allgather", "sparse")


@dataclass
class KVTraffic:
    """What one microbatch's exchange moved on this rank, one entry per layer call (forward).

    Tokens are real K/V tokens of other ranks; bytes are of the buffers that arrived (for the
    all-gather they include the padding to the largest rank's count) and of the keys handed
    to attention (own + received: the K/V this rank holds while the layer attends).
    """

    received_tokens: list[int] = field(default_factory=list)
    received_bytes: list[int] = field(default_factory=list)
    held_tokens: list[int] = field(default_factory=list)
    held_bytes: list[int] = field(default_factory=list)

    def record(self, received_tokens: int, received_bytes: int, keys: torch.Tensor) -> None:
        self.received_tokens.append(int(received_tokens))
        self.received_bytes.append(int(received_bytes))
        self.held_tokens.append(int(keys.shape[2]))
        self.held_bytes.append(keys.numel() * keys.element_size())


def _peer(group, rank: int) -> int:
    """Global rank of ``rank`` in ``group`` (P2P ops address global ranks)."""
    return rank if group is None else dist.get_global_rank(group, rank)


# ---- all-gather ----------------------------------------------------------------------------

class _AllGatherFn(torch.autograd.Function):
    """All ranks' equal-sized parts stacked (cp, ...); backward: each rank's summed gradient slice.

    Not ``torch.distributed.nn.functional.all_gather``: on gloo its backward (all-to-all by
    scatters) addresses group ranks as global ranks and fails in a subgroup that does not
    contain rank 0 (a CP group of a (dp, cp) mesh), and it is deprecated. Gloo has no
    reduce-scatter, so there the backward all-reduces the stacked gradient and keeps its slice.
    """

    @staticmethod
    def forward(ctx, x, group):
        size = dist.get_world_size(group)
        parts = [torch.empty_like(x) for _ in range(size)]
        dist.all_gather(parts, x.contiguous(), group=group)
        ctx.group = group
        return torch.stack(parts)

    @staticmethod
    def backward(ctx, grad):
        group = ctx.group
        grad = grad.contiguous()
        if dist.get_backend(group) == "gloo":
            dist.all_reduce(grad, group=group)
            return grad[dist.get_rank(group)].clone(), None
        out = torch.empty_like(grad[0])
        dist.reduce_scatter_tensor(out, grad, group=group)
        return out, None


class AllGatherKV:
    """All ranks' K/V, in global order; ``lo``/``hi`` are global flat positions."""

    def __init__(self, counts: tuple[int, ...], order: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor, group=None):
        self.counts, self.order, self.lo, self.hi, self.group = tuple(counts), order, lo, hi, group
        self.kv_len = int(sum(self.counts))
        self.traffic = KVTraffic()

    def __call__(self, kv: torch.Tensor) -> torch.Tensor:
        """(1, H, n_local, E) → (1, H, N, E) in global token order (autograd-aware).

        Collectives need equal sizes, so each part is padded to the largest token count.
        """
        width = max(self.counts)
        pad = width - kv.shape[2]
        if pad:
            kv = torch.nn.functional.pad(kv, (0, 0, 0, pad))
        parts = _AllGatherFn.apply(kv, self.group).unbind(0)
        full = torch.cat([p[:, :, :c] for p, c in zip(parts, self.counts)], dim=2)  # rank-major order
        me = dist.get_rank(self.group)
        wire = sum(p.numel() * p.element_size() for r, p in enumerate(parts) if r != me)
        self.traffic.record(self.kv_len - self.counts[me], wire, full)
        return full.index_select(2, self.order)


# ---- sparse ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class SparseKVPlan:
    """Host-side plan of the mask-aware exchange for one rank of one microbatch.

    ``send_index[p]``: local token indices whose K/V go to peer ``p`` (empty for itself and for
    peers that need none). ``recv_counts[p]``: tokens arriving from ``p``. ``key_order``: index
    into ``cat(own tokens, from peer 0, from peer 1, …)`` that puts the keys in global order.
    ``key_positions``: their flat positions. ``lo``/``hi``: this rank's queries' key intervals
    in key coordinates.
    """

    send_index: tuple[torch.Tensor, ...]
    recv_counts: tuple[int, ...]
    key_order: torch.Tensor
    key_positions: torch.Tensor
    lo: torch.Tensor
    hi: torch.Tensor

    def to(self, device) -> "SparseKVPlan":
        return SparseKVPlan(tuple(t.to(device) for t in self.send_index), self.recv_counts, self.key_order.to(device),
                            self.key_positions.to(device), self.lo.to(device), self.hi.to(device))


def sparse_kv_plan(assignment: CPAssignment, lo: np.ndarray, hi: np.ndarray, rank: int,
                   kv_block: int | None = None) -> SparseKVPlan:
    """The plan of ``rank`` from the flat mask intervals (every rank computes the same sets).

    ``kv_block``: keys travel in blocks of this many positions (default the assignment's block
    size); see ``amylum.planner.cp_traffic.received_keys``.
    """
    cp, n = assignment.cp, assignment.seq_len
    owner = assignment.owner()
    held = [assignment.token_indices(r) for r in range(cp)]
    local_of = np.empty(n, dtype=np.int64)  # position of a token among its owner's tokens
    for r in range(cp):
        local_of[held[r]] = np.arange(held[r].size)
    recv = {r: received_keys(assignment, lo, hi, r, kv_block, owner=owner) for r in range(cp)}
    # peer p sends to ``rank`` the received positions it owns, in sequence order; ``rank`` sends
    # to peer p its own positions among p's received ones
    from_peer = [recv[rank][owner[recv[rank]] == p] for p in range(cp)]
    send = [local_of[recv[p][owner[recv[p]] == rank]] if p != rank else np.zeros(0, np.int64) for p in range(cp)]
    own = held[rank]
    if own.size == 0:
        # an empty shard runs one placeholder token (context.cp_forward) that attends to itself;
        # nobody needs its K/V, so it receives nothing either
        keys = np.zeros(1, dtype=np.int64)
        order = np.zeros(1, dtype=np.int64)
        key_lo = key_hi = np.zeros(1, dtype=np.int64)
        from_peer = [np.zeros(0, np.int64)] * cp
    else:
        stacked = np.concatenate([own] + from_peer)
        order = np.argsort(stacked, kind="stable")
        keys = stacked[order]
        key_lo = np.searchsorted(keys, lo[own], side="left")
        key_hi = np.searchsorted(keys, hi[own], side="right") - 1
        width = hi[own] - lo[own] + 1
        if np.any(key_hi - key_lo + 1 != width):
            raise RuntimeError("sparse K/V plan misses keys a query may attend; received_keys is inconsistent")
    t = lambda a: torch.as_tensor(np.ascontiguousarray(a), dtype=torch.long)  # noqa: E731
    return SparseKVPlan(tuple(t(s) for s in send), tuple(int(f.size) for f in from_peer), t(order), t(keys),
                        t(key_lo), t(key_hi))


def _exchange(parts: list[torch.Tensor], recv_shapes: list[tuple | None], group) -> list[torch.Tensor | None]:
    """Send ``parts[p]`` to peer p and receive a tensor of ``recv_shapes[p]`` from it (None: nothing).

    Both sides know the sizes from the host plan, so empty pairs post no operation. All sends
    and receives are posted at once (``batch_isend_irecv``), so the order cannot deadlock.
    """
    me = dist.get_rank(group)
    ops, out = [], [None] * len(recv_shapes)
    for p, shape in enumerate(recv_shapes):
        if p == me:
            continue
        if parts[p] is not None and parts[p].shape[2] > 0:
            ops.append(dist.P2POp(dist.isend, parts[p].contiguous(), _peer(group, p), group))
        if shape is not None:
            out[p] = parts[me].new_empty(shape) if parts[me] is not None else None
            ops.append(dist.P2POp(dist.irecv, out[p], _peer(group, p), group))
    if ops:
        for req in dist.batch_isend_irecv(ops):
            req.wait()
    return out


class _SparseExchangeFn(torch.autograd.Function):
    """Forward: own K/V + what the peers send, in global order. Backward: dK/dV back to owners."""

    @staticmethod
    def forward(ctx, kv, plan: SparseKVPlan, group, traffic: KVTraffic):
        me = dist.get_rank(group)
        B, H, _, E = kv.shape
        sends = [kv.index_select(2, idx) if idx.numel() else None for idx in plan.send_index]
        sends[me] = kv  # carries the dtype/device for the receive buffers; never sent
        shapes = [(B, H, c, E) if c and p != me else None for p, c in enumerate(plan.recv_counts)]
        got = _exchange(sends, shapes, group)
        received = [g for g in got if g is not None]
        keys = torch.cat([kv] + received, dim=2).index_select(2, plan.key_order)
        traffic.record(sum(g.shape[2] for g in received), sum(g.numel() * g.element_size() for g in received), keys)
        ctx.plan, ctx.group, ctx.n_local = plan, group, kv.shape[2]
        return keys

    @staticmethod
    def backward(ctx, grad):
        plan, group = ctx.plan, ctx.group
        me = dist.get_rank(group)
        stacked = torch.zeros_like(grad).index_copy(2, plan.key_order, grad)  # undo the global-order permutation
        own, offset = stacked[:, :, : ctx.n_local], ctx.n_local
        back: list = [None] * len(plan.recv_counts)
        for p, c in enumerate(plan.recv_counts):
            if c and p != me:
                back[p] = stacked[:, :, offset : offset + c]
                offset += c
        back[me] = own
        B, H, _, E = grad.shape
        shapes = [(B, H, idx.numel(), E) if idx.numel() and p != me else None for p, idx in enumerate(plan.send_index)]
        returned = _exchange(back, shapes, group)
        d_kv = own.clone()
        for p, g in enumerate(returned):
            if g is not None:
                d_kv.index_add_(2, plan.send_index[p], g)  # the peers' dK/dV for the tokens we sent them
        return d_kv, None, None, None


class SparseKV:
    """Only the key blocks this rank's queries may see (plus its own); see :class:`SparseKVPlan`."""

    def __init__(self, plan: SparseKVPlan, group=None):
        self.plan, self.group = plan, group
        self.lo, self.hi = plan.lo, plan.hi
        self.kv_len = int(plan.key_positions.numel())
        self.traffic = KVTraffic()

    def __call__(self, kv: torch.Tensor) -> torch.Tensor:
        return _SparseExchangeFn.apply(kv, self.plan, self.group, self.traffic)

"""Mask-aware K/V exchange: only the key blocks a rank's queries may see, point to point."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist

from amylum.planner.cp_balance import CPAssignment, received_keys

from .base import KVTraffic, _KVExchange, _peer, _Pending, _wait_all

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


def _post_p2p(parts: list[torch.Tensor | None], recv_shapes: list[tuple | None], group, pending: _Pending,
              works: list) -> list[torch.Tensor | None]:
    """Post sends of ``parts[p]`` to peer p and receives of ``recv_shapes[p]`` from it (None: nothing).

    Both sides know the sizes from the host plan, so empty pairs post no operation. All sends
    and receives are posted at once (``batch_isend_irecv``), so the order cannot deadlock; the
    handles go to ``works`` and the tensors stay alive in ``pending`` until they complete.
    """
    me = dist.get_rank(group)
    ops, out = [], [None] * len(recv_shapes)
    for p, shape in enumerate(recv_shapes):
        if p == me:
            continue
        if parts[p] is not None and parts[p].shape[2] > 0:
            ops.append(dist.P2POp(dist.isend, parts[p].contiguous(), _peer(group, p), group))
        if shape is not None:
            out[p] = parts[me].new_empty(shape)
            ops.append(dist.P2POp(dist.irecv, out[p], _peer(group, p), group))
    if ops:
        works.extend(dist.batch_isend_irecv(ops))
        pending.keep.extend(op.tensor for op in ops)
    return out


class SparseKV(_KVExchange):
    """Only the key blocks this rank's queries may see (plus its own); see :class:`SparseKVPlan`.

    Backward: the received tokens' dK/dV go back to their owners by the same pattern, reversed,
    and are added to the owners' own.
    """

    def __init__(self, plan: SparseKVPlan, group=None):
        self.plan, self.group = plan, group
        self.lo, self.hi = plan.lo, plan.hi
        self.kv_len = int(plan.key_positions.numel())
        self.traffic = KVTraffic()
        self.me = dist.get_rank(group) if dist.is_initialized() else 0
        self.n_own = self.kv_len - sum(c for p, c in enumerate(plan.recv_counts) if p != self.me)
        # key_order indexes cat(own, from peer 0, from peer 1, …): its first n_own are own
        self.is_own = plan.key_order < self.n_own
        self.remote_order = plan.key_order[~self.is_own] - self.n_own

    def _prepare(self, kv):
        return kv

    def _post(self, kv, pending):
        B, H, _, E = kv.shape
        pending.keep.append(kv)
        sends = [kv.index_select(2, idx) if idx.numel() else None for idx in self.plan.send_index]
        sends[self.me] = kv  # carries the dtype/device for the receive buffers; never sent
        shapes = [(B, H, c, E) if c and p != self.me else None for p, c in enumerate(self.plan.recv_counts)]
        return [g for g in _post_p2p(sends, shapes, self.group, pending, pending.works) if g is not None]

    def _post_grad(self, pending, grads):
        kv = pending.keep[0]
        B, H, _, E = kv.shape
        back: list = [None] * len(self.plan.recv_counts)
        it = iter(grads)
        for p, c in enumerate(self.plan.recv_counts):
            if c and p != self.me:
                g = next(it)
                back[p] = g if g is not None else kv.new_zeros(B, H, c, E)
        back[self.me] = kv
        shapes = [(B, H, idx.numel(), E) if idx.numel() and p != self.me else None
                  for p, idx in enumerate(self.plan.send_index)]
        pending.grad_result = _post_p2p(back, shapes, self.group, pending, pending.grad_works)
        pending.grad_posted = True

    def _finish_grad(self, pending, d_own):
        if not pending.grad_posted:  # received nothing (or no gradient reached it): still return ours
            self._post_grad(pending, [None] * sum(1 for p, c in enumerate(self.plan.recv_counts) if c and p != self.me))
        _wait_all(pending.grad_works)
        d_kv = d_own.clone() if d_own is not None else torch.zeros_like(pending.keep[0])
        for p, g in enumerate(pending.grad_result):
            if g is not None:
                d_kv.index_add_(2, self.plan.send_index[p], g)  # the peers' dK/dV for the tokens we sent them
        return d_kv

    def keys(self, own, received):
        """Own + received keys, in global order."""
        return torch.cat([own] + received, dim=2).index_select(2, self.plan.key_order)

    def remote(self, received):
        """The received keys, in global order."""
        return torch.cat(received, dim=2).index_select(2, self.remote_order)

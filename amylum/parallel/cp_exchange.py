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

Both run in two halves, each an autograd node: ``start`` posts the communication (async) and
hands back this rank's own K/V at once, ``wait`` returns the received K/V once they are in.
``exchange(kv)`` runs both back to back; ``cp_overlap`` attends to the own keys in between,
and the backward's dK/dV return likewise overlaps the own keys' attention backward.
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

    def record(self, received_tokens: int, received_bytes: int, held_tokens: int, token_bytes: int) -> None:
        self.received_tokens.append(int(received_tokens))
        self.received_bytes.append(int(received_bytes))
        self.held_tokens.append(int(held_tokens))
        self.held_bytes.append(int(held_tokens) * int(token_bytes))


def _peer(group, rank: int) -> int:
    """Global rank of ``rank`` in ``group`` (P2P ops address global ranks)."""
    return rank if group is None else dist.get_global_rank(group, rank)


# ---- the exchange in two halves (shared by both exchanges) ----------------------------------

class _Pending:
    """One layer call's exchange in flight: the handles and buffers its two autograd nodes share."""

    def __init__(self) -> None:
        self.works: list = []  # forward communication
        self.keep: list = []  # tensors the communication reads or writes until it completes
        self.grad_works: list = []  # backward communication
        self.grad_result = None  # what the backward communication delivers (exchange-specific)
        self.grad_posted = False


def _wait_all(works) -> None:
    for w in works:
        w.wait()


class _StartFn(torch.autograd.Function):
    """Forward: post the exchange (async). Backward: wait for the peers' dK/dV and add them.

    Returns this rank's K/V (an alias, so the exchange's backward always runs: it is a
    collective every rank must join, even one whose received keys end up unused) and the
    receive buffers, which :class:`_WaitFn` reads once they are filled. The backward
    communication was started by ``_WaitFn.backward``; the dK/dV it carries reach this node
    through ``pending``, not as gradients (their shapes are the *sent* tokens', not the received).
    """

    @staticmethod
    def forward(ctx, kv, exchange, pending):
        buffers = exchange._post(kv, pending)
        ctx.exchange, ctx.pending = exchange, pending
        ctx.set_materialize_grads(False)
        return (kv.view_as(kv), *buffers)

    @staticmethod
    def backward(ctx, d_own, *_received):
        d_kv = ctx.exchange._finish_grad(ctx.pending, d_own)
        return d_kv, None, None


class _WaitFn(torch.autograd.Function):
    """Forward: wait until the received K/V are in. Backward: start returning their dK/dV (async).

    Created after whatever ran while the exchange was in flight, so autograd (which runs the
    ready node created last first) runs this backward before that work's backward, which
    then overlaps the backward communication; :class:`_StartFn`'s backward waits for it.
    """

    @staticmethod
    def forward(ctx, exchange, pending, *buffers):
        _wait_all(pending.works)
        ctx.exchange, ctx.pending = exchange, pending
        return tuple(b.view_as(b) for b in buffers)

    @staticmethod
    def backward(ctx, *grads):
        ctx.exchange._post_grad(ctx.pending, list(grads))
        return (None, None) + (None,) * len(grads)


class _KVExchange:
    """Both exchanges: ``start`` (post) → ``wait`` (received K/V) → ``keys`` (all, global order).

    ``exchange(kv)`` does all three at once. For overlap, ``start`` returns this rank's own K/V
    at once, and ``remote`` orders the received ones; ``is_own`` tells which of ``keys`` are
    this rank's (in global order, as ``lo``/``hi`` index them).
    """

    group = None
    traffic: KVTraffic

    def __call__(self, kv: torch.Tensor) -> torch.Tensor:
        own, pending, buffers = self.start(kv)
        return self.keys(own, self.wait(pending, buffers))

    def start(self, kv: torch.Tensor):
        """Post the exchange of ``kv`` (1, H, n_local, E): (own K/V, pending, receive buffers)."""
        pending = _Pending()
        own, *buffers = _StartFn.apply(self._prepare(kv), self, pending)
        return own[:, :, : self.n_own], pending, buffers

    def wait(self, pending: _Pending, buffers: list[torch.Tensor]) -> list[torch.Tensor]:
        """The received K/V (autograd-aware), once they are in; records the traffic."""
        received = list(_WaitFn.apply(self, pending, *buffers)) if buffers else []
        if not buffers:
            _wait_all(pending.works)
        kv = pending.keep[0]  # this rank's K/V as posted
        wire = sum(b.numel() * b.element_size() for b in received)
        self.traffic.record(self.kv_len - self.n_own, wire, self.kv_len, kv.numel() // kv.shape[2] * kv.element_size())
        return received

    # each exchange: _prepare, _post (forward posts), _post_grad (backward posts, from the received
    # keys' gradients), _finish_grad (waits, adds to the own gradient), keys, remote


# ---- all-gather ----------------------------------------------------------------------------

class AllGatherKV(_KVExchange):
    """All ranks' K/V, in global order; ``lo``/``hi`` are global flat positions.

    Collectives need equal sizes, so each rank's part is padded to the largest token count.
    Backward: each rank's dK/dV summed over the ranks that attended to it, a reduce-scatter
    (NCCL); gloo has none, so there an all-reduce of the stacked gradient and its own slice.
    Not ``torch.distributed.nn.functional.all_gather``: on gloo its backward (all-to-all by
    scatters) addresses group ranks as global ranks and fails in a subgroup that does not
    contain rank 0 (a CP group of a (dp, cp) mesh), and it is deprecated.
    """

    def __init__(self, counts: tuple[int, ...], order: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor, group=None):
        self.counts, self.order, self.lo, self.hi, self.group = tuple(counts), order, lo, hi, group
        self.kv_len = int(sum(self.counts))
        self.traffic = KVTraffic()
        self.me = dist.get_rank(group) if dist.is_initialized() else 0
        self.n_own = self.counts[self.me]
        # the own tokens in the rank-major gathered order, and the others' once own is taken out
        offset = sum(self.counts[: self.me])
        self.is_own = (order >= offset) & (order < offset + self.n_own)
        rest = order[~self.is_own]
        self.remote_order = torch.where(rest >= offset + self.n_own, rest - self.n_own, rest)

    def _prepare(self, kv):
        pad = max(self.counts) - kv.shape[2]
        return torch.nn.functional.pad(kv, (0, 0, 0, pad)) if pad else kv

    def _post(self, kv, pending):
        parts = [torch.empty_like(kv) for _ in self.counts]
        kv = kv.contiguous()
        pending.works.append(dist.all_gather(parts, kv, group=self.group, async_op=True))
        pending.keep = [kv] + parts
        return [p for r, p in enumerate(parts) if r != self.me]

    def _post_grad(self, pending, grads):
        stacked = pending.keep[0].new_zeros((len(self.counts),) + pending.keep[0].shape)  # own slot: 0
        others = [r for r in range(len(self.counts)) if r != self.me]
        for r, g in zip(others, grads):
            if g is not None:
                stacked[r] = g
        if dist.get_backend(self.group) == "gloo":
            pending.grad_works.append(dist.all_reduce(stacked, group=self.group, async_op=True))
            pending.grad_result = (stacked, self.me)
        else:
            out = torch.empty_like(stacked[0])
            pending.grad_works.append(dist.reduce_scatter_tensor(out, stacked, group=self.group, async_op=True))
            pending.grad_result = (out, None)
        pending.grad_posted = True

    def _finish_grad(self, pending, d_own):
        if not pending.grad_posted:  # no gradient reached the received keys: still join the collective
            self._post_grad(pending, [None] * (len(self.counts) - 1))
        _wait_all(pending.grad_works)
        got, mine = pending.grad_result
        got = got if mine is None else got[mine]
        return got if d_own is None else d_own + got

    def keys(self, own, received):
        """Every rank's keys, in global order."""
        it = iter(received)
        parts = [own if r == self.me else next(it)[:, :, :c] for r, c in enumerate(self.counts)]
        return torch.cat(parts, dim=2).index_select(2, self.order)

    def remote(self, received):
        """The other ranks' keys, in global order."""
        others = [c for r, c in enumerate(self.counts) if r != self.me]
        return torch.cat([b[:, :, :c] for b, c in zip(received, others)], dim=2).index_select(2, self.remote_order)


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

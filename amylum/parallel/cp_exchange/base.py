"""What both K/V exchanges share: the traffic record and the start/wait halves as autograd nodes."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.distributed as dist

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

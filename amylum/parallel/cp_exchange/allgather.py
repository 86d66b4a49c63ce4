"""All-gather K/V exchange: every rank's keys, in global order."""

from __future__ import annotations

import torch
import torch.distributed as dist

from .base import KVTraffic, _KVExchange, _wait_all

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

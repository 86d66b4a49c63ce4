"""What the planner's cost model needs from CP balancing: the slowest rank's share per CP degree.

``cp_imbalance`` plans the CP token assignment (``cp_balance.plan_cp``, the runtime's policy)
on the LLM's sequence mask and returns, per CP degree, the whole-layer max/mean of per-rank
work (attention entries × their cost + tokens × the rest of the layer): the slowest rank does
``imbalance / cp`` of the layer's work. Without a mask the sequence is one causal sample per
row, the LLM's worst case for an even split and the case ``balanced`` is built for.
"""

from __future__ import annotations

import numpy as np

from .cp_balance import plan_cp
from .cp_traffic import rank_work
from .cp_work import CPWorkModel


def causal_intervals(rows: int, seq: int) -> tuple[np.ndarray, np.ndarray]:
    """(rows, seq) key intervals of plain causal rows: query q sees keys 0..q of its row."""
    hi = np.broadcast_to(np.arange(seq, dtype=np.int64), (rows, seq)).copy()
    return np.zeros_like(hi), hi


def cp_imbalance(seq: int, cps, *, rows: int = 1, intervals=None, work: CPWorkModel | None = None,
                 policy: str = "balanced", block_size: int = 128) -> dict[int, float]:
    """{cp: whole-layer max/mean of per-rank work} for each CP degree in ``cps``.

    ``intervals``: (lo, hi) of the real mask ((S,) or (B, S), e.g. from ``attention.mask_spec``
    of a representative microbatch); default ``rows`` causal rows of ``seq`` tokens. ``work``:
    the layer's cost per entry and per token (``CPWorkModel.from_shape``; default a Llama-3-8B
    layer on an H100).
    """
    lo, hi = intervals if intervals is not None else causal_intervals(rows, seq)
    out = {}
    for cp in cps:
        if cp <= 1:
            out[cp] = 1.0
            continue
        a = plan_cp(lo, hi, cp=cp, policy=policy, block_size=block_size, model=work)
        out[cp] = rank_work(a, lo, hi, model=work, traffic=False).imbalance
    return out

"""Context-parallel token assignment: which tokens of a long sequence each CP rank holds.

Pure functions over the O(S) key intervals of a mask (``amylum.attention.mask_spec``: query
``q`` may attend keys ``lo[q]..hi[q]``). No torch.distributed, no GPU: a plan for 128k tokens
on 32 ranks takes milliseconds.

The sequence is cut into blocks of ``block_size`` tokens (the last may be shorter). A rank
holds any set of blocks, not necessarily contiguous, and ranks may hold different token
counts; the runtime exchanges K/V (all-gather, or only the blocks a rank's queries may see),
so any assignment is legal (positions stay global).

This module holds ``plan_cp`` and re-exports the parts, one job per file: ``cp_work`` (cost
per entry and token), ``cp_blocks`` (intervals, blocks, ``CPAssignment``), ``cp_policies``
(the algorithms), ``cp_traffic`` (per-rank work, K/V traffic and memory).

Policies (``POLICIES``):

* ``uniform``   contiguous, equal block counts (plain sequence split).
* ``zigzag``    2·cp chunks, rank i takes chunks i and 2·cp−1−i (balances a causal triangle).
* ``makespan_attn``  Cornstarch's ``makespan_min``: LPT over blocks weighted by attention
  work only (its bitfield variant dropped the per-block linear term).
* ``makespan``  the same LPT, each block weighted by the *whole layer*: allowed attention
  entries × (forward + backward cost per entry) + tokens × (forward + backward linear/MLP
  cost per token). With unequal token counts per rank the linear term matters.
* ``contiguous``  amylum's, for mask-aware K/V exchange: contiguous runs of blocks with the
  smallest maximum whole-layer load. Keeps locality (few remote keys needed under sparse
  masks such as packed rows), at some cost in balance when blocks per rank are few.
* ``balanced``  amylum's: ``makespan`` followed by move/swap refinement between the most and
  less loaded ranks (never worse than LPT, by construction), and an exact branch and bound
  when there are few blocks.

Why blocks and not tokens: attention kernels work in tiles of 128 queries, and block
granularity keeps each rank's queries tile-aligned; a finer split buys balance only where
blocks are few per rank, which ``balanced`` handles with the exact search.
"""

from __future__ import annotations

from .cp_blocks import (  # noqa: F401  (public names stay importable from here)
    CPAssignment,
    block_entries,
    block_starts,
    block_tokens,
    block_weights,
    effective_block_size,
    flat_intervals,
)
from .cp_policies import (  # noqa: F401
    EXACT_MAX_BLOCKS,
    POLICIES,
    assign_blocks,
    contiguous_blocks,
    exact_blocks,
    lpt_blocks,
    refine_blocks,
    uniform_blocks,
    zigzag_blocks,
)
from .cp_traffic import RankWork, allgather_kv_time, needed_keys, rank_work, received_keys  # noqa: F401
from .cp_work import AttentionKernelFit, CPWorkModel, default_work_model  # noqa: F401


def plan_cp(spec_or_lo, hi=None, *, cp: int, policy: str = "balanced", block_size: int = 128,
            model: CPWorkModel | None = None) -> CPAssignment:
    """Assign the tokens of a mask (a ``MaskSpec`` or ``lo``/``hi``; (B, S) is flattened) to ``cp`` ranks.

    ``model`` weights the blocks for ``makespan`` and ``balanced`` (default
    :func:`default_work_model`, a Llama-3-8B-shaped layer; pass ``CPWorkModel.from_shape`` for
    your LLM and GPU profile). ``makespan_attn`` always weighs attention only, as Cornstarch does.
    """
    if policy not in POLICIES:
        raise ValueError(f"unknown CP policy {policy!r}; expected one of {POLICIES}")
    lo, hi = flat_intervals(spec_or_lo, hi)
    if lo.size == 0:
        raise ValueError("cannot split an empty sequence")
    block = effective_block_size(lo.size, cp, block_size)
    if policy == "makespan_attn":
        model = CPWorkModel.attention_only()
    model = model or default_work_model()
    weights = block_weights(lo, hi, block, model)
    ranks = assign_blocks(weights, cp, policy)
    return CPAssignment(lo.size, block, tuple(tuple(sorted(r)) for r in ranks), policy)

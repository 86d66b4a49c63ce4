"""Microbatch assignment policies: which samples of one global batch go to which DP replica and
which microbatch, as swappable pure functions.

Every policy has the signature ``policy(table, replicas, microbatches, seed=0) -> Assignment``,
where ``table`` is the global batch's :class:`~amylum.planner.workload.WorkTable` and the result
is ``assignment[replica][microbatch]`` = sorted positions into the table. A policy only permutes
the global batch: every sample lands in exactly one microbatch of this iteration (none dropped,
duplicated or moved to another iteration), so the gradient is unchanged when the loss is
normalised by the iteration's token count. With at least ``replicas × microbatches`` samples no
microbatch is empty.

Policies:

- ``dataset_order``: contiguous, equal-count chunks in the given order (the naive baseline);
- ``random``: the same after a seeded shuffle;
- ``sorted_greedy``: longest first by LLM tokens, each sample to the microbatch with the fewest tokens;
- ``lpt``: longest-processing-time first on total work (encoder + LLM summed into one number);
- ``hierarchical`` (amylum's, after Entrain's public description): replicas first, then
  encoder work per microbatch, then LLM work with the excess deferred to later microbatches;
  optionally aimed at a pipeline load profile (``profile=``). See
  :mod:`amylum.planner.microbatch_hierarchical` and docs/microbatching.md.

The pieces live in one-job files: the search tools in :mod:`~amylum.planner.microbatch_search`,
the hierarchical policy in :mod:`~amylum.planner.microbatch_hierarchical`, checks and metrics
in :mod:`~amylum.planner.microbatch_metrics`; this module holds the baselines and the registry.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from .microbatch_hierarchical import Assignment, check_profile, form_microbatches, hierarchical, split_replicas
from .microbatch_metrics import balance, check_assignment, microbatch_loads, profile_deviation
from .microbatch_search import desc, greedy
from .work_model import WorkTable

Policy = Callable[..., Assignment]

__all__ = [
    "POLICIES", "PROFILED", "Assignment", "Policy", "balance", "check_assignment", "check_profile", "dataset_order",
    "form_microbatches", "get_policy", "hierarchical", "lpt", "microbatch_loads", "profile_deviation", "random",
    "sorted_greedy", "split_replicas",
]


def _check_args(table: WorkTable, replicas: int, microbatches: int) -> None:
    if replicas < 1 or microbatches < 1:
        raise ValueError(f"need >= 1 replica and >= 1 microbatch, got {replicas} x {microbatches}")
    if len(table) == 0:
        raise ValueError("the global batch is empty")


def _as_assignment(members: list[list[int]], replicas: int, microbatches: int) -> Assignment:
    """Flat bins (replica-major) → [replica][microbatch] sorted index arrays."""
    return [[np.sort(np.asarray(members[r * microbatches + k], dtype=np.int64)) for k in range(microbatches)]
            for r in range(replicas)]


def _chunks(order: np.ndarray, replicas: int, microbatches: int) -> Assignment:
    parts = np.array_split(order, replicas * microbatches)
    return _as_assignment([list(p) for p in parts], replicas, microbatches)


# ---------------------------------------------------------------------------------------------
# baselines


def dataset_order(table: WorkTable, replicas: int, microbatches: int, seed: int = 0) -> Assignment:
    _check_args(table, replicas, microbatches)
    return _chunks(np.arange(len(table)), replicas, microbatches)


def random(table: WorkTable, replicas: int, microbatches: int, seed: int = 0) -> Assignment:
    _check_args(table, replicas, microbatches)
    return _chunks(np.random.default_rng(seed).permutation(len(table)), replicas, microbatches)


def sorted_greedy(table: WorkTable, replicas: int, microbatches: int, seed: int = 0) -> Assignment:
    _check_args(table, replicas, microbatches)
    bins = replicas * microbatches
    return _as_assignment(greedy(desc(table.tokens), table.tokens.tolist(), bins), replicas, microbatches)


def lpt(table: WorkTable, replicas: int, microbatches: int, seed: int = 0) -> Assignment:
    _check_args(table, replicas, microbatches)
    tot = table.total
    return _as_assignment(greedy(desc(tot), tot.tolist(), replicas * microbatches), replicas, microbatches)


POLICIES: dict[str, Policy] = {
    "dataset_order": dataset_order,
    "random": random,
    "sorted_greedy": sorted_greedy,
    "lpt": lpt,
    "hierarchical": hierarchical,
}

# policies that accept a pipeline load profile (``profile=``)
PROFILED = ("hierarchical",)


def get_policy(name: str) -> Policy:
    if name not in POLICIES:
        raise ValueError(f"unknown microbatch policy {name!r}; choose from {sorted(POLICIES)}")
    return POLICIES[name]

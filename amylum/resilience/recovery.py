"""Where a (re)started group resumes from, and who sends which layer to whom (pure functions).

Every node reports the snapshots it holds in its own host memory: for each, the lineage (a run id
that changes only when the run restarts from a disk checkpoint or from scratch), the step, and the
units (layers) whose parameters and optimizer state it contains. The group resumes at the latest
(lineage, step) for which every unit has a holder. Snapshots of one step are bit-identical across
replicas (every replica applies the same all-reduced gradients), so any holder may be the source.

Nodes never read each other's snapshots: a unit a node must hold but has no snapshot of is sent
to it over the process group by a holder (``route_transfers``). A lost node's snapshot is thus
never consulted, whatever is left of it on its machine.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class SnapshotInfo:
    lineage: str
    step: int
    units: frozenset


@dataclass(frozen=True)
class NodeReport:
    node: str
    rank: int
    snapshots: tuple[SnapshotInfo, ...]


@dataclass(frozen=True)
class ResumePoint:
    lineage: str
    step: int
    holders: dict  # unit → ranks holding its state at (lineage, step), sorted


def choose_resume(reports: list[NodeReport], units: list[str]) -> ResumePoint | None:
    """The latest (lineage, step) at which every unit has a holder among ``reports``; None if none."""
    need = set(units)
    candidates = {(s.lineage, s.step) for r in reports for s in r.snapshots}
    for lineage, step in sorted(candidates, key=lambda c: (c[1], c[0]), reverse=True):
        holders: dict[str, list[int]] = {}
        for r in reports:
            for s in r.snapshots:
                if (s.lineage, s.step) == (lineage, step):
                    for u in s.units:
                        holders.setdefault(u, []).append(r.rank)
        if need <= set(holders):
            return ResumePoint(lineage, step, {u: sorted(holders[u]) for u in units})
    return None


def missing_units(reports: list[NodeReport], units: list[str]) -> list[str]:
    """Units that no report holds at any step (for the error message when nothing can resume)."""
    held = {u for r in reports for s in r.snapshots for u in s.units}
    return [u for u in units if u not in held]


def route_transfers(holders: dict, need: dict, sizes: dict | None = None) -> dict:
    """(src rank, dst rank) → units src sends to dst.

    ``holders``: unit → ranks with its state at the resume point; ``need``: rank → units it must
    hold in the new plan. A rank that holds a unit keeps it; for every other (rank, unit) the
    holder with the least bytes assigned so far sends (ties: lowest rank), spreading the load.
    Deterministic, so every rank computes the same routes from the same all-gathered reports.
    """
    sizes = sizes or {}
    load: dict[int, float] = {}
    routes: dict[tuple[int, int], list[str]] = {}
    for dst in sorted(need):
        for unit in sorted(need[dst]):
            srcs = holders.get(unit)
            if not srcs:
                raise ValueError(f"unit {unit} has no holder to copy from")
            if dst in srcs:
                continue
            src = min(srcs, key=lambda r: (load.get(r, 0.0), r))
            load[src] = load.get(src, 0.0) + float(sizes.get(unit, 1.0))
            routes.setdefault((src, dst), []).append(unit)
    return routes


def holder_sets(need: dict) -> dict:
    """frozenset of ranks → units held by exactly those ranks (one gradient all-reduce group each).

    Pipelines of different shapes cut the model at different layers, so a layer's replicas are a
    different rank set than its neighbour's; layers with the same replica set share one group and
    one flat all-reduce.
    """
    by_unit: dict[str, set] = {}
    for rank, units in need.items():
        for u in units:
            by_unit.setdefault(u, set()).add(rank)
    out: dict[frozenset, list[str]] = {}
    for u in sorted(by_unit):
        out.setdefault(frozenset(by_unit[u]), []).append(u)
    return out

"""Bring a freshly (re)started group to one consistent training state.

Order of preference:
1. host memory: the latest step every layer has a surviving snapshot of (``choose_resume``);
   each node loads its own snapshot, and the layers a node lacks are sent by a holder;
2. the last disk checkpoint (``CheckpointManager``), when no step survives in memory on the nodes
   present: more than f failures at once, or a relaunch on new machines. The message says which
   nodes and layers were lost and which steps are redone;
3. a fresh start (step 0), when there is neither.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field

from amylum.resilience import comm
from amylum.resilience.parts import Parts, set_schedule_step
from amylum.resilience.recovery import NodeReport, SnapshotInfo, choose_resume, missing_units, route_transfers
from amylum.resilience.snapshot import NodeSnapshots
from amylum.resilience.units import load_unit_state, unit_state
from amylum.runtime.checkpoint import CheckpointManager


class NoStateError(RuntimeError):
    """Nothing to resume from: no surviving replica of some layer and no disk checkpoint."""


@dataclass
class Restored:
    source: str  # "memory", "disk" or "fresh"
    step: int
    lineage: str
    message: str = ""
    transfers: list = field(default_factory=list)  # [src node, dst node, units, bytes]
    seconds: float = 0.0


def report_of(node: str, rank: int, snaps: NodeSnapshots) -> dict:
    """What this node holds (from its own snapshots only) plus its latest snapshot's plan/generation."""
    have = snaps.list()
    latest = {"step": have[-1].info.step, "gen": have[-1].meta.get("gen", 0), "plan": have[-1].meta.get("plan")} if have else None
    return {"node": node, "rank": rank, "latest": latest,
            "snapshots": [{"lineage": s.info.lineage, "step": s.info.step, "units": sorted(s.info.units)}
                          for s in have]}


def _reports(gathered: list[dict]) -> list[NodeReport]:
    return [NodeReport(g["node"], g["rank"], tuple(SnapshotInfo(s["lineage"], s["step"], frozenset(s["units"]))
                                                   for s in g["snapshots"])) for g in gathered]


def restore(parts: Parts, cfg, gathered: list[dict], rank: int, snaps: NodeSnapshots, ckpt: CheckpointManager,
            new_lineage: str, previous_nodes: list[str] | None) -> Restored:
    """Restore ``parts`` in place on every rank (a collective: all ranks call it with the same ``gathered``)."""
    t0 = time.perf_counter()
    units = [u.name for u in parts.units]
    reports = _reports(gathered)
    point = choose_resume(reports, units)
    if point is not None:
        out = _from_memory(parts, cfg, point, reports, rank, snaps)
    else:
        present = {r.node for r in reports}
        lost = sorted(set(previous_nodes or ()) - present)
        if previous_nodes:
            why = (f"more than f failures at once: nodes {', '.join(lost) or '(none)'} of the previous plan are gone "
                   f"and no surviving node holds a snapshot of layers {missing_units(reports, units)[:4] or units[:4]}")
        else:
            why = "no node holds an in-memory snapshot (new job or new machines)"
        latest = ckpt.latest()
        if latest is not None:
            extra = CheckpointManager.load(latest.path, parts.model, parts.optimizer)
            step = int(extra["step"])
            set_schedule_step(parts, cfg, step)
            out = Restored("disk", step, new_lineage,
                           f"{why}; resuming from the last disk checkpoint {latest.path} (step {step}); "
                           f"steps after {step} are redone")
        elif previous_nodes:
            raise NoStateError(f"{why}, and there is no disk checkpoint in {ckpt.root}: the run cannot resume; "
                               "set checkpoint.every to keep a fallback")
        else:
            set_schedule_step(parts, cfg, 0)
            out = Restored("fresh", 0, new_lineage, why + "; starting at step 0")
    snaps.drop_after(out.step, out.lineage)
    out.seconds = time.perf_counter() - t0
    return out


def _from_memory(parts: Parts, cfg, point, reports: list[NodeReport], rank: int, snaps: NodeSnapshots) -> Restored:
    mine = next((s for s in snaps.list() if (s.info.lineage, s.info.step) == (point.lineage, point.step)), None)
    by_name = {u.name: u for u in parts.units}
    if mine is not None:  # this node's own snapshot only: never another node's files
        state = NodeSnapshots.load(mine)
        for name in mine.info.units:
            u = by_name[name]
            load_unit_state(parts.model, parts.optimizer, u,
                            {k: v for k, v in state.items() if _owner(k, u)})
    set_schedule_step(parts, cfg, point.step)
    # every rank holds every layer (one-node pipelines): a rank lacking a layer receives it
    need = {r.rank: set(by_name) for r in reports}
    sizes = {u.name: sum(parts.model.get_parameter(p).numel() for p in u.params) for u in parts.units}
    routes = route_transfers(point.holders, need, sizes)
    node_of = {r.rank: r.node for r in reports}
    done = []
    for (src, dst) in sorted(routes):
        names = routes[(src, dst)]
        if rank == src:
            state = {}
            for name in names:
                state.update(unit_state(parts.model, parts.optimizer, by_name[name]))
            nbytes = comm.send_state(state, dst)
        elif rank == dst:
            state = comm.recv_state(src)
            for name in names:
                load_unit_state(parts.model, parts.optimizer, by_name[name],
                                {k: v for k, v in state.items() if _owner(k, by_name[name])})
            nbytes = sum(v.numel() * v.element_size() for v in state.values())
        else:
            nbytes = None
        done.append([node_of[src], node_of[dst], len(names), nbytes])
    return Restored("memory", point.step, point.lineage, f"resumed from host memory at step {point.step}", done)


def _owner(key: str, unit) -> bool:
    """Whether a unit_state key (``param/<name>`` or ``optim/<name>/<k>``) belongs to ``unit``."""
    name = key.split("/", 2)[1]
    return name in unit.params


def new_lineage() -> str:
    return uuid.uuid4().hex[:12]

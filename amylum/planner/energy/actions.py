"""Computation DAG from amylum's per-stage action lists (``amylum.planner.schedule``).

Input: ``{stage: [Action, ...]}`` where an action has ``op`` in F/B/W/SEND/RECV, ``stage``,
``mb`` (microbatch), and for SEND/RECV ``peer`` (the other stage) and ``data`` ("act"/"grad").
Any object with those attributes works (duck-typed), so this module does not import the
planner's schedule code.

Edges:
- the compute actions of one stage run in list order (one GPU stream per stage);
- a RECV waits for the data of its matching SEND (same source stage, destination stage, data
  and microbatch, matched in order): the compute action that produced the data (the last one
  before the SEND on the sender) must finish before the first compute action after the RECV
  on the receiver starts. Sends are buffered, as in the schedule module, so a SEND does not
  wait for its receiver.

This covers what Perseus's linear 1F1B DAG cannot: several encoder stages feeding one LLM
stage (two SENDs into one stage), frozen stages with no B/W actions, split W, per-microbatch
profiles. Each stage is one node owner ("rank" in the DAG); its blocking power is
``gpus_per_stage[s] × blocking_power_w`` because all of its TP/DP GPUs block together.
"""

from __future__ import annotations

from collections import defaultdict, deque
from typing import Any, Mapping, Sequence

from .dag import ComputationDAG, DAGError, Node, chain
from .profiles import FrequencyProfile

COMPUTE = ("F", "B", "W")


def dag_from_actions(schedule: Mapping[int, Sequence[Any]], profile: FrequencyProfile,
                     blocking_power_w: float | Mapping[int, float] = 70.0,
                     gpus_per_stage: Mapping[int, int] | None = None) -> ComputationDAG:
    """Build the iteration's computation DAG; raises DAGError on unmatched SEND/RECV or cycles."""
    dag = ComputationDAG()
    node_of: dict[tuple[int, str, int], int] = {}
    # (src, dst, data, mb) → queue of producing node ids (SEND side) / consuming (RECV side)
    produced: dict[tuple, deque] = defaultdict(deque)
    waiting: dict[tuple, deque] = defaultdict(deque)
    for s in sorted(schedule):
        acts = list(schedule[s])
        ids: list[int] = []
        last_compute: int | None = None
        pending_recv: list[tuple] = []
        for i, a in enumerate(acts):
            op = getattr(a, "op", None)
            if op in COMPUTE:
                key = (s, op, a.mb)
                if key in node_of:
                    raise DAGError(f"stage {s}: {op} of microbatch {a.mb} appears twice")
                nid = dag.add_node(Node(s, op, s, a.mb, profile.options(s, op, a.mb)))
                node_of[key] = nid
                ids.append(nid)
                last_compute = nid
                for k in pending_recv:
                    waiting[k].append(nid)
                pending_recv = []
            elif op == "SEND":
                if last_compute is None:
                    raise DAGError(f"stage {s} action {i}: SEND of microbatch {a.mb} before any computation")
                produced[(s, a.peer, a.data, a.mb)].append(last_compute)
            elif op == "RECV":
                pending_recv.append((a.peer, s, a.data, a.mb))
            else:
                raise DAGError(f"stage {s} action {i}: unknown op {op!r}")
        if pending_recv:
            raise DAGError(f"stage {s}: RECV {pending_recv[0]} is not followed by any computation")
        chain(dag, ids)
    for key in set(produced) | set(waiting):
        src, dst, data, mb = key
        p, w = produced.get(key, deque()), waiting.get(key, deque())
        if len(p) != len(w):
            raise DAGError(f"{data} of microbatch {mb} from stage {src} to stage {dst}: "
                           f"{len(p)} SEND(s) but {len(w)} RECV(s)")
        for u, v in zip(p, w):
            dag.add_edge(u, v)
    gps = gpus_per_stage or {}
    for s in dag.order:
        pw = blocking_power_w[s] if isinstance(blocking_power_w, Mapping) else blocking_power_w
        dag.blocking_power_w[s] = float(pw) * gps.get(s, 1)
    dag.validate()
    return dag

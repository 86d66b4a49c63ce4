"""The computation DAG of one training iteration, as the frequency planner sees it.

Nodes are compute actions (F, B, W of one stage and microbatch on one rank), each with the
(time, energy) it costs at every GPU clock it may run at. Edges are "must finish before":
the order of actions on one rank, and data handed from one rank to another (a SEND matched
to its RECV). Communication time, the optimizer step and collectives are not nodes: like
Perseus, they enter only through the blocking power that an idle GPU draws (see frontier.py).

The type is deliberately plain (lists of ints) so the solver can walk it without a graph
library, and construction is linear in the number of nodes and edges (Perseus tests every
ordered pair of instructions, O(n²)).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable, Sequence


class DAGError(ValueError):
    """The computation graph is malformed: a cycle, a bad edge, a node without options."""


@dataclass(frozen=True)
class Option:
    """One way to run a computation: at ``freq_mhz`` it takes ``time_s`` and uses ``energy_j``."""

    freq_mhz: int
    time_s: float
    energy_j: float

    def __post_init__(self) -> None:
        if not (self.time_s > 0.0) or self.time_s != self.time_s:
            raise DAGError(f"option at {self.freq_mhz} MHz: time must be > 0 s, got {self.time_s}")
        if self.energy_j < 0.0 or self.energy_j != self.energy_j:
            raise DAGError(f"option at {self.freq_mhz} MHz: energy must be >= 0 J, got {self.energy_j}")


@dataclass(frozen=True)
class Node:
    """A compute action. ``options`` holds every clock it may run at (one option = fixed)."""

    rank: int
    kind: str  # "F", "B" (input gradient, or full backward), "W" (weight gradient)
    stage: int
    microbatch: int
    options: tuple[Option, ...]

    def __post_init__(self) -> None:
        if not self.options:
            raise DAGError(f"node {self.label}: needs at least one (frequency, time, energy) option")

    @property
    def label(self) -> str:
        return f"{self.kind}{self.stage}.{self.microbatch}@r{self.rank}"


@dataclass
class ComputationDAG:
    """Nodes, edges and the blocking power of each rank's GPU.

    ``blocking_power_w[r]`` is what rank r's GPU draws while it waits (Perseus measured 70–84 W
    in a blocked NCCL receive); it may differ per rank because GPU types may differ.
    ``order[r]`` lists rank r's node ids in execution order (plans report clocks in that order).
    """

    nodes: list[Node] = field(default_factory=list)
    edges: list[tuple[int, int]] = field(default_factory=list)
    blocking_power_w: dict[int, float] = field(default_factory=dict)
    order: dict[int, list[int]] = field(default_factory=dict)

    # ---- construction ------------------------------------------------------------------
    def add_node(self, node: Node) -> int:
        self.nodes.append(node)
        nid = len(self.nodes) - 1
        self.order.setdefault(node.rank, []).append(nid)
        return nid

    def add_edge(self, u: int, v: int) -> None:
        n = len(self.nodes)
        if not (0 <= u < n and 0 <= v < n):
            raise DAGError(f"edge ({u}, {v}) names a node outside 0..{n - 1}")
        if u == v:
            raise DAGError(f"self-loop on node {self.nodes[u].label}")
        self.edges.append((u, v))

    # ---- queries -------------------------------------------------------------------------
    @property
    def ranks(self) -> list[int]:
        return sorted(self.order)

    def total_blocking_power(self) -> float:
        """Σ over ranks of blocking power; ranks without an entry must not exist (checked)."""
        missing = [r for r in self.order if r not in self.blocking_power_w]
        if missing:
            raise DAGError(f"no blocking power given for ranks {missing}")
        return float(sum(self.blocking_power_w[r] for r in self.order))

    def adjacency(self) -> tuple[list[list[int]], list[list[int]]]:
        """Predecessor and successor lists, duplicates removed."""
        n = len(self.nodes)
        preds: list[list[int]] = [[] for _ in range(n)]
        succs: list[list[int]] = [[] for _ in range(n)]
        seen: set[tuple[int, int]] = set()
        for u, v in self.edges:
            if (u, v) in seen:
                continue
            seen.add((u, v))
            preds[v].append(u)
            succs[u].append(v)
        return preds, succs

    def topological_order(self) -> list[int]:
        """Kahn's algorithm; raises DAGError naming a node on a cycle."""
        preds, succs = self.adjacency()
        indeg = [len(p) for p in preds]
        stack = [v for v in range(len(self.nodes)) if indeg[v] == 0]
        out: list[int] = []
        while stack:
            u = stack.pop()
            out.append(u)
            for v in succs[u]:
                indeg[v] -= 1
                if indeg[v] == 0:
                    stack.append(v)
        if len(out) != len(self.nodes):
            stuck = next(v for v in range(len(self.nodes)) if indeg[v] > 0)
            raise DAGError(f"the dependency graph has a cycle through {self.nodes[stuck].label} "
                           "(a RECV waiting on a SEND that comes later, or a bad schedule)")
        return out

    def validate(self) -> None:
        if not self.nodes:
            raise DAGError("empty computation graph")
        self.total_blocking_power()
        self.topological_order()

    def makespan(self, times: Sequence[float]) -> float:
        """Longest path when node i takes ``times[i]`` (the iteration time of an assignment)."""
        preds, _ = self.adjacency()
        finish = [0.0] * len(self.nodes)
        for v in self.topological_order():
            start = max((finish[p] for p in preds[v]), default=0.0)
            finish[v] = start + times[v]
        return max(finish, default=0.0)

    def energy(self, choice: Sequence[Option], iteration_time_s: float | None = None) -> float:
        """Iteration energy of a per-node option choice: compute energy + blocking power × idle.

        Every GPU is busy or blocked for the whole iteration time T, so
        E = Σ e_i + Σ_r P_r · (T − busy_r). T defaults to the makespan of the choice.
        """
        if len(choice) != len(self.nodes):
            raise DAGError(f"choice has {len(choice)} options for {len(self.nodes)} nodes")
        t = self.makespan([o.time_s for o in choice]) if iteration_time_s is None else iteration_time_s
        busy: dict[int, float] = {r: 0.0 for r in self.order}
        e = 0.0
        for node, o in zip(self.nodes, choice):
            busy[node.rank] += o.time_s
            e += o.energy_j
        return e + sum(self.blocking_power_w[r] * (t - busy[r]) for r in self.order)


def chain(dag: ComputationDAG, ids: Iterable[int]) -> None:
    """Add edges that make ``ids`` run one after another (the order of one rank)."""
    prev = None
    for i in ids:
        if prev is not None:
            dag.add_edge(prev, i)
        prev = i

"""Small DAG builders shared by the energy tests."""

from __future__ import annotations

from amylum.planner.energy.dag import ComputationDAG, Node, Option


def convex_options(t_min: int, t_max: int, scale: float, unit: float = 1.0) -> tuple[Option, ...]:
    """One option per integer time in [t_min, t_max]; energy convex and strictly decreasing."""
    return tuple(Option(2000 - t, t * unit, scale * (t_max - t + 1) ** 2 + 1.0) for t in range(t_min, t_max + 1))


def make_dag(options: list[tuple[Option, ...]], edges: list[tuple[int, int]], power: float = 0.0,
             ranks: list[int] | None = None) -> ComputationDAG:
    dag = ComputationDAG()
    ranks = ranks or list(range(len(options)))
    for i, opts in enumerate(options):
        dag.add_node(Node(ranks[i], "F", 0, i, opts))
    for u, v in edges:
        dag.add_edge(u, v)
    for r in set(ranks):
        dag.blocking_power_w[r] = power
    return dag

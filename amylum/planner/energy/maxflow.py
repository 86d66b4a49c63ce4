"""Minimum s–t cut of a network whose edges carry flow bounds [lb, ub] (Dinic, pure Python).

Phillips–Dessouky needs the cut that minimizes Σ_{S→T} ub − Σ_{T→S} lb. Standard reduction:
1. find a feasible flow: capacities ub − lb, node imbalances of the lower bounds fed from a
   super-source s′ and drained to a super-sink t′, plus an unbounded t → s edge; feasible iff
   the s′ edges saturate;
2. drop s′, t′ and t → s; push a maximum s → t flow in the residual network;
3. S = nodes reachable from s by residual capacity.

Capacities are floats; ``float('inf')`` is a real infinity here (Perseus hard-codes 10,000,
which silently breaks when costs are large — gap 7). An unbounded s → t path makes the flow
infinite, which the caller reads as "no finite cut". No graph library: the networks are small
(the critical sub-DAG of one iteration) and are rebuilt at every solver phase.
"""

from __future__ import annotations

INF = float("inf")


class InfeasibleFlow(RuntimeError):
    """No flow meets every lower bound (the current schedule is not cost-optimal for its time)."""


class FlowNetwork:
    """Paired edge arrays: edge e and its reverse e ^ 1."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.adj: list[list[int]] = [[] for _ in range(n)]
        self.to: list[int] = []
        self.cap: list[float] = []
        self.last_reach: list[int] = []  # levels of the final BFS of max_flow: ≥ 0 = reachable

    def add_node(self) -> int:
        self.adj.append([])
        self.n += 1
        return self.n - 1

    def add_edge(self, u: int, v: int, cap: float) -> int:
        e = len(self.to)
        self.to += (v, u)
        self.cap += (cap, 0.0)
        self.adj[u].append(e)
        self.adj[v].append(e + 1)
        return e

    def max_flow(self, s: int, t: int, eps: float) -> float:
        """Dinic: BFS levels, then blocking flows by iterative DFS. Mutates capacities."""
        adj, to, cap, n = self.adj, self.to, self.cap, self.n
        total = 0.0
        while True:
            level = [-1] * n
            level[s] = 0
            queue = [s]
            for u in queue:
                lu = level[u] + 1
                for e in adj[u]:
                    v = to[e]
                    if level[v] < 0 and cap[e] > eps:
                        level[v] = lu
                        queue.append(v)
            if level[t] < 0:
                # this BFS found every node reachable by residual capacity: the cut's S side
                self.last_reach = level
                return total
            it = [0] * n
            path: list[int] = []
            u = s
            while True:
                if u == t:
                    f = min(cap[e] for e in path)
                    if f == INF:
                        return INF
                    k_cut = 0
                    for i, e in enumerate(path):
                        cap[e] -= f
                        cap[e ^ 1] += f
                        if cap[e] <= eps and k_cut == 0:
                            k_cut = i + 1
                    total += f
                    # resume from the tail of the first saturated edge
                    k_cut = k_cut or len(path)
                    del path[k_cut - 1:]
                    u = to[path[-1]] if path else s
                    continue
                au = adj[u]
                i = it[u]
                lu = level[u] + 1
                while i < len(au):
                    e = au[i]
                    if cap[e] > eps and level[to[e]] == lu:
                        break
                    i += 1
                it[u] = i
                if i < len(au):
                    e = au[i]
                    path.append(e)
                    u = to[e]
                    continue
                # dead end: prune u and retreat
                level[u] = -2
                if not path:
                    break
                e = path.pop()
                u = to[e ^ 1]
                it[u] += 1


def _augment_by_search(net: FlowNetwork, s: int, t: int, eps: float) -> float:
    """Max flow by repeated depth-first augmenting-path searches; leaves ``last_reach`` set.

    Why not Dinic here: after a warm start the flow is nearly maximum (about one augmenting
    path per solver phase), and a search that stops on reaching t is cheaper than Dinic's full
    BFS layering. The final, failing search visits exactly the nodes reachable from s.
    """
    adj, to, cap, n = net.adj, net.to, net.cap, net.n
    total = 0.0
    while True:
        parent = [-1] * n  # edge used to reach each node; -2 marks s
        parent[s] = -2
        stack = [s]
        found = False
        while stack and not found:
            u = stack.pop()
            for e in adj[u]:
                v = to[e]
                if parent[v] == -1 and cap[e] > eps:
                    parent[v] = e
                    if v == t:
                        found = True
                        break
                    stack.append(v)
        if not found:
            net.last_reach = [0 if p != -1 else -1 for p in parent]
            return total
        path = []
        v = t
        while v != s:
            e = parent[v]
            path.append(e)
            v = to[e ^ 1]
        f = min(cap[e] for e in path)
        if f == INF:
            return INF
        for e in path:
            cap[e] -= f
            cap[e ^ 1] += f
        total += f


class BoundedFlow:
    """A feasible flow of a network with bounds [lb, ub], kept between solver phases.

    ``edges`` are (u, v, lb, ub). ``start`` is an initial flow per edge (warm start: the
    previous phase's flow, almost feasible, so the max flows need few augmentations); it is
    clamped to [lb, ub] and the resulting node imbalances are routed like the lower-bound
    demands of the textbook reduction. Raises InfeasibleFlow when the bounds cannot be met.
    """

    def __init__(self, n: int, edges: list[tuple[int, int, float, float]], s: int, t: int,
                 eps: float, start: list[float] | None = None) -> None:
        self.n, self.s, self.t, self.eps = n, s, t, eps
        net = self.net = FlowNetwork(n)
        self.lb = [e[2] for e in edges]
        self.ub = [e[3] for e in edges]
        imbalance = [0.0] * n
        eids: list[int] = []
        out_of_s = 0.0
        for i, (u, v, lb, ub) in enumerate(edges):
            f = lb if start is None else min(max(start[i], lb), ub)
            e = net.add_edge(u, v, ub - f)
            net.cap[e + 1] = f - lb
            eids.append(e)
            imbalance[v] += f
            imbalance[u] -= f
            if u == s:
                out_of_s += f
        self.eids = eids
        # The t → s edge closes the circulation: it carries the current s → t flow value.
        imbalance[s] += out_of_s
        imbalance[t] -= out_of_s
        if max((abs(x) for x in imbalance), default=0.0) > eps:
            sp, tp = net.add_node(), net.add_node()
            back = net.add_edge(t, s, INF)
            net.cap[back + 1] = out_of_s
            aux: list[int] = []
            need = 0.0
            for v in range(n):
                x = imbalance[v]
                if x > eps:
                    aux.append(net.add_edge(sp, v, x))
                    need += x
                elif x < -eps:
                    aux.append(net.add_edge(v, tp, -x))
            got = net.max_flow(sp, tp, eps)
            if got < need - eps * max(1, len(edges)):
                raise InfeasibleFlow(f"lower bounds unmet: routed {got:.6g} of {need:.6g}")
            # Later max flows work on the original network only: zero the helpers both ways.
            for e in aux + [back]:
                net.cap[e] = 0.0
                net.cap[e ^ 1] = 0.0

    def flow(self, i: int) -> float:
        return self.lb[i] + self.net.cap[self.eids[i] + 1]

    def set_bounds(self, i: int, lb: float, ub: float) -> bool:
        """Change edge i's bounds in place; False (nothing changed) if its flow would violate them."""
        f = self.flow(i)
        if f < lb - self.eps or f > ub + self.eps:
            return False
        e = self.eids[i]
        self.net.cap[e] = ub - f
        self.net.cap[e + 1] = max(f - lb, 0.0)
        self.lb[i], self.ub[i] = lb, ub
        return True

    def min_cut(self) -> tuple[list[bool], bool]:
        """Augment to a maximum s → t flow; (source side of a minimum cut, unbounded)."""
        if _augment_by_search(self.net, self.s, self.t, self.eps) == INF:
            return [], True
        return [x >= 0 for x in self.net.last_reach[: self.n]], False

    def flows(self) -> list[float]:
        return [self.flow(i) for i in range(len(self.eids))]


def min_cut_with_bounds(n: int, edges: list[tuple[int, int, float, float]], s: int, t: int,
                        eps: float) -> tuple[list[bool], bool]:
    """Source side of a minimum cut for edges (u, v, lb, ub) and whether it is unbounded
    (every cut contains an unbounded forward edge). Raises InfeasibleFlow."""
    return BoundedFlow(n, edges, s, t, eps).min_cut()

"""Phillips–Dessouky frontier: endpoints, monotonicity, brute-force optimality, min cut."""

import itertools
import random

import pytest
from energy_helpers import convex_options, make_dag

from amylum.planner.energy.dag import Option
from amylum.planner.energy.frontier import FrontierError, solve_frontier
from amylum.planner.energy.hull import build_curve
from amylum.planner.energy.maxflow import INF, min_cut_with_bounds


def brute_force(dag, power_total=0.0):
    """Least Σe′ for every deadline T, over every combination of options."""
    best = {}
    for choice in itertools.product(*[n.options for n in dag.nodes]):
        t = round(dag.makespan([o.time_s for o in choice]))
        c = sum(o.energy_j - dag.blocking_power_w[n.rank] * o.time_s for n, o in zip(dag.nodes, choice))
        best[t] = min(best.get(t, float("inf")), c)
    out, run = {}, float("inf")
    for t in sorted(best):  # a plan fitting in T also fits any later deadline
        run = min(run, best[t])
        out[t] = run
    return out


def test_chain_endpoints_and_values():
    # a → b in series; a costs 4 per unit saved, b costs 1: shorten b first, then a.
    a = tuple(Option(f, t, e) for f, t, e in [(3, 1.0, 20.0), (2, 2.0, 16.0), (1, 3.0, 12.0)])
    b = tuple(Option(f, t, e) for f, t, e in [(3, 1.0, 12.0), (2, 2.0, 11.0), (1, 3.0, 10.0)])
    dag = make_dag([a, b], [(0, 1)])
    fr = solve_frontier(dag, unit_time_s=1.0)
    assert (fr.t_max_units, fr.t_min_units) == (6, 2)
    assert [fr.hull_cost(u) for u in fr.labels()] == pytest.approx([22, 23, 24, 28, 32])
    assert [o.freq_mhz for o in fr.point(5).options] == [1, 2]
    assert [o.freq_mhz for o in fr.point(2).options] == [3, 3]


def test_parallel_branches_slack_is_slowed_at_the_fastest_point():
    # a ∥ b, b much shorter: at the shortest iteration a runs fastest, b is slowed into a's shadow.
    a = convex_options(4, 8, 1.0)
    b = convex_options(1, 3, 1.0)
    dag = make_dag([a, b], [], power=0.0)
    fr = solve_frontier(dag, unit_time_s=1.0)
    assert (fr.t_max_units, fr.t_min_units) == (8, 4)
    fastest = fr.point(4)
    assert fastest.options[0].time_s == 4 and fastest.options[1].time_s == 3  # b at its cheapest


def test_blocking_power_is_accounted():
    # one op; P_blocking 10 W: energy at T = e(t) + 10·(T − t)
    a = tuple(Option(f, t, e) for f, t, e in [(2, 1.0, 30.0), (1, 2.0, 25.0)])
    dag = make_dag([a], [], power=10.0)
    fr = solve_frontier(dag, unit_time_s=1.0)
    assert fr.point(2).energy_j == pytest.approx(25.0)
    assert fr.point(1).energy_j == pytest.approx(30.0)
    # e′ = 30−10 = 20 vs 25−20 = 5: both Pareto; with 30 W the slow clock would not pay off
    dag2 = make_dag([a], [], power=30.0)
    assert solve_frontier(dag2, unit_time_s=1.0).t_max_units == 2


@pytest.mark.parametrize("seed", range(12))
def test_matches_brute_force_on_tiny_dags(seed):
    rng = random.Random(seed)
    n = rng.randint(3, 5)
    opts = []
    for _ in range(n):
        lo = rng.randint(1, 3)
        opts.append(convex_options(lo, lo + rng.randint(1, 3), rng.uniform(0.5, 3.0)))
    edges = [(u, v) for u in range(n) for v in range(u + 1, n) if rng.random() < 0.45]
    ranks = [rng.randint(0, 1) for _ in range(n)]
    dag = make_dag(opts, edges, power=rng.choice([0.0, 0.3]), ranks=ranks)
    fr = solve_frontier(dag, unit_time_s=1.0)
    ref = brute_force(dag)
    assert fr.t_max_units == max(ref) or ref[fr.t_max_units] == ref[max(ref)]
    assert fr.t_min_units == min(ref)
    for u in fr.labels():
        assert fr.hull_cost(u) == pytest.approx(ref[u], abs=1e-6), u
        assert fr.point(u).effective_cost_j == pytest.approx(ref[u], abs=1e-6)


@pytest.mark.parametrize("seed", range(6))
def test_monotone_and_never_below_optimum_with_nonconvex_options(seed):
    rng = random.Random(100 + seed)
    n = 4
    opts = []
    for _ in range(n):
        ts = sorted(rng.sample(range(1, 7), 4))
        es = sorted((rng.uniform(1, 20) for _ in ts), reverse=True)
        opts.append(tuple(Option(100 + i, float(t), e) for i, (t, e) in enumerate(zip(ts, es))))
    dag = make_dag(opts, [(0, 2), (1, 2), (1, 3)], power=0.2, ranks=[0, 0, 1, 1])
    fr = solve_frontier(dag, unit_time_s=1.0)
    ref = brute_force(dag)
    costs = [fr.hull_cost(u) for u in fr.labels()]  # slow → fast
    assert all(b >= a - 1e-9 for a, b in zip(costs, costs[1:]))
    for u in fr.labels():
        p = fr.point(u)
        assert dag.makespan([o.time_s for o in p.options]) <= u + 1e-9
        assert p.effective_cost_j >= ref[u] - 1e-9
        assert fr.hull_cost(u) <= ref[u] + 1e-9  # the convex relaxation is a lower bound


def test_warm_start_and_cold_start_agree():
    rng = random.Random(7)
    opts = [convex_options(rng.randint(2, 4), 9, rng.uniform(0.5, 2)) for _ in range(8)]
    edges = [(i, i + 1) for i in range(0, 7, 2)] + [(0, 3), (2, 5), (4, 7), (1, 6)]
    dag = make_dag(opts, edges, power=0.1, ranks=[i % 3 for i in range(8)])
    warm = solve_frontier(dag, unit_time_s=1.0)
    cold = solve_frontier(dag, unit_time_s=1.0, warm_start=False)
    assert list(warm.labels()) == list(cold.labels())
    for u in warm.labels():
        assert warm.hull_cost(u) == pytest.approx(cold.hull_cost(u))


def test_out_of_range_point_is_a_typed_error():
    dag = make_dag([convex_options(1, 3, 1.0)], [])
    fr = solve_frontier(dag, unit_time_s=1.0)
    with pytest.raises(FrontierError, match="outside"):
        fr.point(0)


def test_hull_quantizes_up_and_filters():
    opts = (Option(3, 0.0101, 9.0), Option(2, 0.0149, 8.0), Option(1, 0.0150, 8.5))  # last: dominated
    c = build_curve(opts, blocking_w=0.0, unit_s=0.001)
    assert c.pareto_units == (11, 15)
    assert c.option_for(14).freq_mhz == 3 and c.option_for(15).freq_mhz == 2


def brute_cut(n, edges, s, t):
    best = INF
    for mask in range(1 << n):
        if not (mask >> s) & 1 or (mask >> t) & 1:
            continue
        val = 0.0
        for u, v, lb, ub in edges:
            if (mask >> u) & 1 and not (mask >> v) & 1:
                val += ub
            elif (mask >> v) & 1 and not (mask >> u) & 1:
                val -= lb
        best = min(best, val)
    return best


@pytest.mark.parametrize("seed", range(10))
def test_min_cut_with_bounds_matches_enumeration(seed):
    rng = random.Random(seed)
    n = 6
    edges = []
    for u in range(n):
        for v in range(u + 1, n):
            if rng.random() < 0.5:
                edges.append((u, v, 0.0, rng.uniform(0.5, 3)))
    edges += [(0, v, 0.0, INF) for v in range(1, n - 1) if rng.random() < 0.3]
    edges = [e for e in edges if not (e[0] == 0 and e[1] == n - 1)]
    side, unbounded = min_cut_with_bounds(n, edges, 0, n - 1, 1e-12)
    ref = brute_cut(n, edges, 0, n - 1)
    if ref == INF:
        assert unbounded
        return
    assert not unbounded
    val = sum(ub for u, v, lb, ub in edges if side[u] and not side[v]) - \
        sum(lb for u, v, lb, ub in edges if side[v] and not side[u])
    assert val == pytest.approx(ref)

"""The chain partition is optimal: it matches brute force on small random chains."""

import random

import pytest

from amylum.planner.partition import (ChainProblem, brute_force_partition, even_partition, objective,
                                      optimal_partition)


def _random_problem(rng: random.Random, n: int, p: int, tight: bool) -> ChainProblem:
    times = tuple(rng.choice([0.5, 1.0, 1.0, 2.0, 3.5]) * rng.uniform(0.9, 1.1) for _ in range(n))
    cut = tuple(rng.uniform(0.0, 0.4) for _ in range(n))
    static = tuple(rng.uniform(1, 4) for _ in range(n))
    act = tuple(rng.uniform(0, 2) for _ in range(n))
    trans = tuple(rng.uniform(0, 1) for _ in range(n))
    m = rng.choice([1, 2, 4, 8])
    inflight = tuple(min(m, p - s) for s in range(p))
    limit = sum(static) * (0.5 if tight else 10) + 5
    return ChainProblem(times, cut, static, act, trans, inflight, limit, m, base_mem=1.0)


@pytest.mark.parametrize("seed", range(40))
def test_matches_brute_force(seed):
    rng = random.Random(seed)
    n = rng.randint(2, 9)
    p = rng.randint(1, n)
    pr = _random_problem(rng, n, p, tight=seed % 3 == 0)
    got, ref = optimal_partition(pr), brute_force_partition(pr)
    assert (got is None) == (ref is None)
    if ref is not None:
        assert got.objective == pytest.approx(ref.objective, rel=1e-9)
        assert got.objective == pytest.approx(objective(got.stage_times, pr.m))
        assert got.bounds[0] == 0 and got.bounds[-1] == n and len(got.bounds) == p + 1


def test_memory_limit_can_make_it_infeasible():
    pr = ChainProblem((1.0,) * 4, (0.0,) * 4, (10.0,) * 4, (0.0,) * 4, (0.0,) * 4, (1, 1), 15.0, 4)
    assert optimal_partition(pr) is None  # two layers of 10 bytes in some stage > 15
    pr2 = ChainProblem((1.0,) * 4, (0.0,) * 4, (10.0,) * 4, (0.0,) * 4, (0.0,) * 4, (1, 1, 1, 1), 15.0, 4)
    assert optimal_partition(pr2).bounds == (0, 1, 2, 3, 4)


def test_balances_unequal_layers():
    # one heavy layer: the optimum isolates it rather than splitting by layer count
    times = (4.0, 1.0, 1.0, 1.0, 1.0)
    pr = ChainProblem(times, (0.0,) * 5, (0.0,) * 5, (0.0,) * 5, (0.0,) * 5, (8, 8), 1.0, 8)
    assert optimal_partition(pr).bounds == (0, 1, 5)
    assert even_partition(5, 2) == (0, 3, 5)

"""How much work each microbatch of a pipelined iteration should carry: a *load profile*.

Balancing every microbatch to the same work is optimal only without a pipeline. In a 1F1B
pipeline the first microbatches' forwards fill the stages one after another and the last
microbatches' backwards drain them, so work placed on those microbatches lies on the critical
path several times over, while work in the steady middle overlaps across stages. Light
microbatches at the ends and heavier ones in the middle (the same total) finish sooner. This is
Entrain's "defer excess workload within each iteration" taken to the pipeline's shape; the
global batch and its gradient are unchanged.

:func:`pipeline_load_profile` finds the shares exactly for a fluid model of the schedule: each
compute action lasts ``fixed + scaled · share`` (``share`` = the microbatch's load relative to the
mean, per column: one column per encoder and one for the LLM), each transfer likewise, and the
replay's semantics (per-stage order, a RECV waits for its SEND's data, SENDs do not block) become
linear constraints on start times. Minimising the iteration end over start times and shares is a
linear program (SciPy's HiGHS: a few tens of milliseconds for 6 stages × 16 microbatches).
:func:`profile_from_plan` builds the inputs from a plan and the cost model.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import numpy as np

# (fixed seconds, seconds that scale with the microbatch's share; the mean microbatch has share 1)
Affine = tuple[float, float]


def pipeline_load_profile(schedule: Mapping[int, list], op_time: Callable[[int, str], Affine],
                          transfer_time: Callable[[int, int, str], Affine], stage_column: Mapping[int, int],
                          columns: int, microbatches: int, *, min_share: float = 0.25, max_share: float = 1.5,
                          sync: Mapping[int, float] | None = None, tolerance: float = 1e-3) -> np.ndarray:
    """Shares ``(microbatches, columns)``, each column's mean 1, minimising the iteration time.

    ``schedule`` is the per-stage action list of one replica (``amylum.planner.schedule``);
    ``op_time(stage, op)`` and ``transfer_time(src, dst, data)`` give the affine costs of the mean
    microbatch; a stage's work scales with column ``stage_column[stage]`` (a grad SEND carries
    the activation shape of its receiver, so it scales with the receiver's column). ``min_share``
    keeps a few samples in every microbatch; ``max_share`` caps a microbatch's activation memory
    at that multiple of the mean's. A column no stage uses stays flat, and of the profiles within
    ``tolerance`` (relative) of the shortest iteration the flattest is returned.
    """
    from scipy.optimize import linprog

    m = int(microbatches)
    if m < 1 or columns < 1:
        raise ValueError(f"need >= 1 microbatch and >= 1 column, got {m}, {columns}")
    if not 0 <= min_share <= 1 <= max_share:
        raise ValueError(f"need 0 <= min_share <= 1 <= max_share, got {min_share}, {max_share}")
    bad = {s: c for s, c in stage_column.items() if not 0 <= c < columns}
    if bad or set(schedule) - set(stage_column):
        raise ValueError(f"stage_column must map every stage to a column in [0, {columns}); got {dict(stage_column)}")
    sync = sync or {}
    # variables: [shares (columns × m, column-major) | start time of each compute action | T]
    ops = [(s, i) for s in sorted(schedule) for i, a in enumerate(schedule[s]) if a.op in ("F", "B", "W")]
    var = {op: columns * m + j for j, op in enumerate(ops)}
    n_var = columns * m + len(ops) + 1
    t_end = n_var - 1
    rows: list[tuple[dict[int, float], float]] = []  # Σ coef·x <= rhs

    def share(col: int, mb: int) -> int:
        return col * m + mb

    def at_least(later: int, earlier: tuple[int, int], terms: list[tuple[int, float]], const: float) -> None:
        """x[later] >= t(earlier) + Σ scaled·share + const, as −x[later] + t + Σ scaled·share <= −const."""
        coef = {later: -1.0, var[earlier]: 1.0}
        for j, v in terms:
            coef[j] = coef.get(j, 0.0) + v
        rows.append((coef, -const))

    def compute_cost(op: tuple[int, int]) -> tuple[list[tuple[int, float]], float]:
        s, i = op
        a = schedule[s][i]
        fixed, scaled = op_time(s, a.op)
        return [(share(stage_column[s], a.mb), scaled)], fixed

    sent: dict[tuple, tuple[tuple[int, int], list[tuple[int, float]], float]] = {}  # message → sender op, cost
    last_compute: dict[int, tuple[int, int]] = {}
    for s in sorted(schedule):
        prev = None
        for i, a in enumerate(schedule[s]):
            if a.op == "SEND":
                if prev is None:
                    raise ValueError(f"stage {s}: {a} comes before any compute action")
                terms, fixed = compute_cost(prev)
                x_fixed, x_scaled = transfer_time(s, a.peer, a.data)
                col = stage_column[a.peer] if a.data == "grad" else stage_column[s]
                sent[(s, a.peer, a.data, a.mb)] = (prev, terms + [(share(col, a.mb), x_scaled)], fixed + x_fixed)
            elif a.op in ("F", "B", "W"):
                if prev is not None:
                    terms, fixed = compute_cost(prev)
                    at_least(var[(s, i)], prev, terms, fixed)
                prev = (s, i)
        if prev is None:
            raise ValueError(f"stage {s} has no compute action")
        last_compute[s] = prev
    for s in sorted(schedule):
        pending = []
        for i, a in enumerate(schedule[s]):
            if a.op == "RECV":
                key = (a.peer, s, a.data, a.mb)
                if key not in sent:
                    raise ValueError(f"stage {s}: {a} has no matching SEND")
                pending.append(sent[key])
            elif a.op in ("F", "B", "W"):
                for sender, terms, const in pending:  # the RECV blocks until the data has landed
                    at_least(var[(s, i)], sender, terms, const)
                pending = []
    for s, op in last_compute.items():
        terms, fixed = compute_cost(op)
        at_least(t_end, op, terms, fixed + float(sync.get(s, 0.0)))
    a_ub = np.zeros((len(rows), n_var))
    b_ub = np.zeros(len(rows))
    for r, (coef, rhs) in enumerate(rows):
        for j, v in coef.items():
            a_ub[r, j] += v
        b_ub[r] = rhs
    used = sorted(set(stage_column[s] for s in schedule))
    a_eq = np.zeros((columns, n_var))
    for col in range(columns):
        a_eq[col, col * m:(col + 1) * m] = 1.0
    bounds = [(min_share, max_share) if col in used else (1.0, 1.0) for col in range(columns) for _ in range(m)]
    bounds += [(0, None)] * (len(ops) + 1)
    cost_vec = np.zeros(n_var)
    cost_vec[t_end] = 1.0
    b_eq = np.full(columns, float(m))
    res = linprog(cost_vec, A_ub=a_ub, b_ub=b_ub, A_eq=a_eq, b_eq=b_eq, bounds=bounds, method="highs")
    if res.status != 0:
        raise RuntimeError(f"load profile LP failed: {res.message}")
    # Many profiles reach that time (a stage with slack accepts any shape), so a second LP picks
    # the flattest one within ``tolerance`` of it: shape microbatches only as far as the pipeline
    # gains from it. d ≥ |share − 1| are extra variables; minimise Σ d.
    k = columns * m
    a2 = np.hstack([a_ub, np.zeros((len(a_ub), k))])
    dev = np.zeros((2 * k, n_var + k))
    dev[:k, :k] = np.eye(k)
    dev[k:, :k] = -np.eye(k)
    dev[:k, n_var:] = dev[k:, n_var:] = -np.eye(k)
    cap = np.zeros((1, n_var + k))
    cap[0, t_end] = 1.0
    a2 = np.vstack([a2, dev, cap])
    b2 = np.concatenate([b_ub, np.ones(k), -np.ones(k), [res.fun * (1 + tolerance)]])
    c2 = np.concatenate([np.zeros(n_var), np.ones(k)])
    res = linprog(c2, A_ub=a2, b_ub=b2, A_eq=np.hstack([a_eq, np.zeros((columns, k))]), b_eq=b_eq,
                  bounds=bounds + [(0, None)] * k, method="highs")
    if res.status != 0:
        raise RuntimeError(f"load profile LP (flattest profile) failed: {res.message}")
    return res.x[: columns * m].reshape(columns, m).T.copy()


def profile_from_plan(plan, model, cluster, microbatches: int, columns: tuple[str, ...], profile=None,
                      tied: bool = True, **kwargs) -> np.ndarray:
    """:func:`pipeline_load_profile` for ``plan``: costs of the mean microbatch from ``model`` (a
    ModelSpec of the dataset's mean sample) and the cost model; ``columns`` are the work table's
    (modalities, then "llm"). Returns (microbatches, len(columns)).

    ``tied`` (default) gives every column the same shares. Samples tie them in reality: an image
    brings its encoder work *and* its LLM tokens, so a microbatch cannot be light in LLM work and
    average in image work at once. Untied, a stage's column is its chain's (a colocated stage
    follows the LLM) and the columns are shaped independently.
    """
    from .cost import CostModel
    from .schedule import build_schedule
    from .simulate import stage_costs, stage_graph

    if plan.schedule not in ("1f1b", "gpipe"):
        raise ValueError(f"load profiles are defined for 1f1b and gpipe schedules, not {plan.schedule!r}")
    cm = CostModel(cluster, profile, checkpointing=plan.checkpointing)
    costs = stage_costs(plan, model, cm)
    sched = build_schedule(stage_graph(plan, costs), microbatches, plan.schedule, plan.split_w)
    index = {c: j for j, c in enumerate(columns)}
    if "llm" not in index:
        raise ValueError(f"columns must include 'llm', got {columns}")
    col = {st.id: 0 if tied else index.get(st.chain, index["llm"]) for st in plan.stages}
    node = cluster.gpus_per_node

    def op_time(s: int, op: str) -> Affine:
        c = costs[s]
        t = {"F": c.f, "B": c.b + (0.0 if plan.split_w else c.w), "W": c.w}[op]
        fixed = min(t, cluster.gpu.layer_overhead_s * len(plan.stage(s).layers))  # launch overhead per layer
        return fixed, t - fixed

    def transfer_time(s: int, peer: int, data: str) -> Affine:
        src = s if data == "act" else peer  # a gradient has its activation's shape
        inter = plan.stage(s).ranks[0][0] // node != plan.stage(peer).ranks[0][0] // node
        fixed = cm.p2p_time(0.0, inter)
        return fixed, cm.p2p_time(costs[src].out_bytes / plan.stage(s).tp, inter) - fixed

    sync = {s: cm.dp_sync_time(c, plan.dp, plan.stage(s).tp) for s, c in costs.items()}
    shares = pipeline_load_profile(sched, op_time, transfer_time, col, 1 if tied else len(columns), microbatches,
                                   sync=sync, **kwargs)
    return np.repeat(shares, len(columns), axis=1) if tied else shares

"""Pipeline templates (Oobleck, SOSP '23): one exact stage plan per node count.

Input is plain data — a per-layer cost list and a node description — so this module is testable
on its own; ``layer_costs_from_spec`` adapts the shared ``ModelSpec``/``CostModel`` to it.

Layout of a template for n nodes of G GPUs: every stage has the same width g (a divisor of G)
and lives inside one node, so a node holds k = G/g consecutive stages and the pipeline has
S = n·k stages. A stage's g GPUs split each microbatch and shard the stage's weights, gradients
and optimizer state (FSDP inside the stage, as Oobleck models it); stages never span nodes, so
sharding collectives stay on the intra-node links.

Cost of a stage [a, b) of width g at distance r from the pipeline's end (r = 1 is the last stage):
    w = Σ(fwd + bwd)/g + (g−1)/g · Σ(collective bytes)/intra_bw + p2p(b, r)
    p2p = 2·(out_bytes of layer b−1 / bw + latency)   (activation forward, gradient back; none at r = 1)
          bw = inter_bw when the stage is the last one of its node (r ≡ 1 mod k), else intra_bw
    memory per GPU = Σ state/g + [g > 1]·(largest layer's weights, gathered) + r·Σ act/g
                     ≤ gpu_memory − reserved          (1F1B keeps r microbatches in flight there)
Pipeline time with m microbatches: T(m) = Σ_s w_s + (m − 1)·max_s w_s (fill/drain plus the
bottleneck's steady state). The reference's T1+T2+T3 with k* the bottleneck gives
Σw + (m − S + k* − 1)·w* + Σ_{i ≥ k*} w_i, which drops below m·w* when the bottleneck is an early
stage — impossible, since that stage alone does m forward+backward passes — so we use the form
that is exact for uniform stages and never undercuts the bottleneck's own work.

Exactness: the first two terms of w are additive over layers, so Σ_s w_s = C_g + Σ p2p over the
cuts, and T = C_g + min over partitions of [Σ p2p + (m−1)·max w]. One suffix DP per width g gives
the least bottleneck W1(S) for every stage count S at once (stage costs depend on r, the distance
from the end, never on S). When the bottleneck-optimal partition also has the least possible Σ p2p
(a second suffix DP), it is optimal. Otherwise the optimum's bottleneck lies in
[W1, W1 + gap/(m−1)]; each distinct stage cost in that window is tried as a cap with a capped
min-Σ DP, stopping when (m−1)·cap alone can no longer win. No memoized divide and conquer: that
keeps one sub-plan per subproblem and is not exact (reference §1.4).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

INF = float("inf")


@dataclass(frozen=True)
class LayerCost:
    """One layer, per microbatch on one GPU.

    ``param_bytes`` are the working weights (gathered for compute when a stage has several GPUs);
    ``grad_bytes`` + ``optim_bytes`` the rest of the training state (0 for a frozen layer);
    ``act_bytes`` what one microbatch keeps from forward to backward; ``out_bytes`` what the layer
    hands to the next one (sent point-to-point when a stage ends here).
    """

    name: str
    fwd_s: float
    bwd_s: float
    param_bytes: float
    grad_bytes: float = 0.0
    optim_bytes: float = 0.0
    act_bytes: float = 0.0
    out_bytes: float = 0.0

    def __post_init__(self) -> None:
        for f in ("fwd_s", "bwd_s", "param_bytes", "grad_bytes", "optim_bytes", "act_bytes", "out_bytes"):
            v = getattr(self, f)
            if not v >= 0:  # also rejects NaN
                raise ValueError(f"layer {self.name}: {f} must be >= 0, got {v}")

    @property
    def state_bytes(self) -> float:
        return self.param_bytes + self.grad_bytes + self.optim_bytes

    @property
    def collective_bytes(self) -> float:
        # FSDP inside a stage: gather weights for forward, again for backward (if any), then
        # reduce-scatter the gradients (trainable layers only)
        return self.param_bytes * (2.0 if self.bwd_s > 0 else 1.0) + self.grad_bytes


@dataclass(frozen=True)
class NodeSpec:
    gpus_per_node: int
    gpu_memory_bytes: float
    intra_bw: float  # achieved bytes/s per GPU inside a node
    inter_bw: float  # achieved bytes/s per GPU across nodes
    p2p_latency_s: float = 0.0
    reserved_bytes: float = 0.0  # CUDA context, allocator slack: not usable for the model

    def __post_init__(self) -> None:
        if self.gpus_per_node < 1:
            raise ValueError(f"a node needs >= 1 GPU, got {self.gpus_per_node}")
        if self.intra_bw <= 0 or self.inter_bw <= 0:
            raise ValueError(f"bandwidths must be > 0, got intra {self.intra_bw}, inter {self.inter_bw}")
        if self.gpu_memory_bytes <= self.reserved_bytes:
            raise ValueError(f"GPU memory {self.gpu_memory_bytes:.3g} B leaves nothing after "
                             f"{self.reserved_bytes:.3g} B reserved")

    @property
    def usable_bytes(self) -> float:
        return self.gpu_memory_bytes - self.reserved_bytes

    def widths(self) -> list[int]:
        """Stage widths: divisors of the node's GPU count, so every node splits evenly."""
        g = self.gpus_per_node
        return [d for d in range(1, g + 1) if g % d == 0]


# ---- scalar reference formulas (the DP below vectorises exactly these) -----------------------

def stage_time(layers, node: NodeSpec, a: int, b: int, g: int, r: int) -> float:
    """Per-microbatch time of the stage holding layers [a, b) on g GPUs, r stages from the end."""
    ls = layers[a:b]
    t = sum(l.fwd_s + l.bwd_s for l in ls) / g
    if g > 1:
        t += (g - 1) / g * sum(l.collective_bytes for l in ls) / node.intra_bw
    return t + _p2p(layers, node, b, g, r)


def _p2p(layers, node: NodeSpec, b: int, g: int, r: int) -> float:
    if r == 1:
        return 0.0
    k = node.gpus_per_node // g
    bw = node.inter_bw if (r - 1) % k == 0 else node.intra_bw
    return 2.0 * (layers[b - 1].out_bytes / bw + node.p2p_latency_s)


def stage_memory(layers, node: NodeSpec, a: int, b: int, g: int, r: int) -> float:
    """Peak bytes per GPU of that stage under 1F1B (r microbatches in flight)."""
    ls = layers[a:b]
    gathered = max(l.param_bytes for l in ls) if g > 1 else 0.0
    return sum(l.state_bytes for l in ls) / g + gathered + r * sum(l.act_bytes for l in ls) / g


def pipeline_time(stage_times, microbatches: int) -> float:
    return sum(stage_times) + (microbatches - 1) * max(stage_times)


# ---- results ------------------------------------------------------------------------------

@dataclass(frozen=True)
class Stage:
    first: int  # first layer index
    end: int  # one past the last layer
    gpus: int
    time_s: float  # per microbatch, forward + backward + its outgoing transfer
    memory_bytes: float  # peak per GPU


@dataclass(frozen=True)
class PipelineTemplate:
    nodes: int
    gpus_per_stage: int
    stages: tuple[Stage, ...]
    microbatches: int  # the per-pipeline microbatch count it was optimised for
    sync_s: float  # gradient all-reduce across pipelines after the last microbatch (see instantiate)

    @property
    def num_stages(self) -> int:
        return len(self.stages)

    @property
    def fill_s(self) -> float:
        return sum(s.time_s for s in self.stages)

    @property
    def bottleneck_s(self) -> float:
        return max(s.time_s for s in self.stages)

    @property
    def stages_per_node(self) -> int:
        return self.num_stages // self.nodes

    def iteration_time(self, microbatches: int) -> float:
        """Exact under the cost model for any count, not an extrapolation from the planned one."""
        if microbatches < 1:
            raise ValueError(f"a pipeline needs >= 1 microbatch, got {microbatches}")
        return self.fill_s + (microbatches - 1) * self.bottleneck_s + self.sync_s

    def node_layers(self, i: int) -> range:
        """Layers held by the template's i-th node."""
        k = self.stages_per_node
        return range(self.stages[i * k].first, self.stages[i * k + k - 1].end)

    def bounds(self) -> tuple[int, ...]:
        return tuple(s.first for s in self.stages) + (self.stages[-1].end,)


@dataclass(frozen=True)
class TemplateSet:
    """Templates for every node count in [n0, max_nodes] (or the feasible part of it)."""

    layers: tuple[LayerCost, ...]
    node: NodeSpec
    n0: int
    templates: dict[int, PipelineTemplate]
    infeasible: dict[int, str] = field(default_factory=dict)  # node count -> why no template

    def sizes(self) -> list[int]:
        return sorted(self.templates)

    def __getitem__(self, nodes: int) -> PipelineTemplate:
        if nodes not in self.templates:
            why = self.infeasible.get(nodes, f"outside the generated range {self.sizes()[0]}..{self.sizes()[-1]}")
            raise KeyError(f"no template for {nodes} nodes: {why}")
        return self.templates[nodes]


# ---- the search ---------------------------------------------------------------------------

class _Width:
    """Stage-cost matrices for one width g, indexed [a, b] (stage = layers [a, b))."""

    def __init__(self, layers, node: NodeSpec, g: int):
        L = len(layers)
        self.g, self.k, self.L = g, node.gpus_per_node // g, L
        pre = lambda xs: np.concatenate(([0.0], np.cumsum(np.asarray(xs, dtype=float))))
        comp = pre([l.fwd_s + l.bwd_s for l in layers])
        coll = pre([l.collective_bytes for l in layers])
        state = pre([l.state_bytes for l in layers])
        act = pre([l.act_bytes for l in layers])
        a, b = np.arange(L + 1)[:, None], np.arange(L + 1)[None, :]
        self.valid = b > a
        base = (comp[b] - comp[a]) / g
        if g > 1:
            base = base + (g - 1) / g * (coll[b] - coll[a]) / node.intra_bw
        self.base_total = float(base[0, L])
        static = (state[b] - state[a]) / g
        if g > 1:  # FSDP gathers one layer's full weights at a time
            par = np.array([l.param_bytes for l in layers])
            gathered = np.zeros((L + 1, L + 1))
            for i in range(L):
                gathered[i, i + 1:] = np.maximum.accumulate(par[i:])
            static = static + gathered
        actm = (act[b] - act[a]) / g
        head = node.usable_bytes - static
        # the largest r (microbatches in flight) this stage fits with
        with np.errstate(divide="ignore", invalid="ignore"):
            rl = np.where(actm > 0, np.floor(head / np.where(actm > 0, actm, 1.0) * (1 + 1e-12)), INF)
        rl = np.where(head < 0, -1.0, rl)
        self.rlim = np.where(self.valid, rl, -1.0)
        out = np.array([0.0] + [l.out_bytes for l in layers])  # out[b] = layer b−1's output
        p_intra = 2.0 * (out / node.intra_bw + node.p2p_latency_s)
        p_inter = 2.0 * (out / node.inter_bw + node.p2p_latency_s)
        p_intra[L] = p_inter[L] = INF  # only the last stage may end at L
        p_intra[0] = p_inter[0] = INF
        self.p = {False: p_intra, True: p_inter}
        self.base = np.where(self.valid, base, INF)
        self.cost = {x: self.base + self.p[x][None, :] for x in (False, True)}
        self.last = np.where(self.valid[:, L], base[:, L], INF)  # r = 1: ends at L, sends nothing

    def inter(self, r: int) -> bool:
        return (r - 1) % self.k == 0

    def stage_cost(self, r: int) -> np.ndarray:
        """Matrix of w_r(a, b), +inf where the stage does not exist or does not fit."""
        if r == 1:
            c = np.full((self.L + 1, self.L + 1), INF)
            c[:, self.L] = self.last
        else:
            c = self.cost[self.inter(r)]
        return np.where(self.rlim >= r, c, INF)

    def sweep(self, rmax: int, mode: str, cap: float = INF):
        """Suffix DP over r = 1..rmax. mode 'max': least bottleneck; 'p2p': least Σ p2p with every
        stage cost ≤ cap. Returns (value at a=0 per r, argmin tables)."""
        L = self.L
        vals = np.full(rmax + 1, INF)
        args = np.zeros((rmax + 1, L + 1), dtype=np.int32)
        prev = None
        for r in range(1, rmax + 1):
            c = self.stage_cost(r)
            if cap < INF:
                c = np.where(c <= cap, c, INF)
            if r == 1:
                cur = c[:, L].copy() if mode == "max" else np.where(c[:, L] < INF, 0.0, INF)
                args[1, :] = L
            else:
                if mode == "max":
                    m = np.maximum(c, prev[None, :])
                else:
                    m = np.where(c < INF, self.p[self.inter(r)][None, :] + prev[None, :], INF)
                arg = m.argmin(axis=1)
                cur = m[np.arange(L + 1), arg]
                args[r] = arg
            vals[r] = cur[0]
            prev = cur
        return vals, args

    def trace(self, args, S: int) -> list[int]:
        bounds, a = [0], 0
        for r in range(S, 0, -1):
            a = int(args[r, a])
            bounds.append(a)
        return bounds

    def p2p_sum(self, bounds) -> float:
        S = len(bounds) - 1
        return sum(float(self.p[self.inter(S - i)][bounds[i + 1]]) for i in range(S - 1))

    def max_cost(self, bounds) -> float:
        S = len(bounds) - 1
        return max(float(self.stage_cost(S - i)[bounds[i], bounds[i + 1]]) for i in range(S))


def _best_for_width(w: _Width, sizes: list[int], m: int) -> dict[int, tuple[float, list[int]]]:
    """For each node count n in sizes: (objective without C_g, bounds) of the optimal partition
    into n·k stages, or nothing if none fits."""
    K = m - 1
    rmax = min(w.L, max(sizes) * w.k)
    if rmax < 1:
        return {}
    wmax, amax = w.sweep(rmax, "max")
    pmin, apmin = w.sweep(rmax, "p2p")
    capped: dict[float, tuple] = {}  # explicit memo for this call: cap -> sweep (shared by all n)
    out = {}
    for n in sizes:
        S = n * w.k
        if S > rmax or wmax[S] == INF:
            continue
        if K == 0:  # no bottleneck term: least Σ p2p wins
            b = w.trace(apmin, S)
            out[n] = (float(pmin[S]), b)
            continue
        b1 = w.trace(amax, S)
        W1, s1 = float(wmax[S]), w.p2p_sum(b1)
        best, best_b = s1 + K * W1, b1
        gap = s1 - float(pmin[S])
        if gap > 1e-12 * max(1.0, abs(s1)):
            # the optimum's bottleneck lies in [W1, W1 + gap/K]: try each stage cost there as a cap
            # (W1 itself too: another partition with the same bottleneck may send less)
            hi = W1 + gap / K
            cand = {W1}
            for r in range(1, S + 1):
                c = w.stage_cost(r)
                cand.update(c[(c >= W1) & (c <= hi)].tolist())
            for cap in sorted(cand):
                if float(pmin[S]) + K * cap >= best:
                    break
                if cap not in capped:
                    capped[cap] = w.sweep(rmax, "p2p", cap)
                vals, args = capped[cap]
                if vals[S] + K * cap < best:
                    bb = w.trace(args, S)
                    best, best_b = w.p2p_sum(bb) + K * w.max_cost(bb), bb
        out[n] = (best, best_b)
    return out


def _make_template(layers, node, n, g, bounds, m) -> PipelineTemplate:
    S = len(bounds) - 1
    stages = tuple(
        Stage(bounds[i], bounds[i + 1], g,
              stage_time(layers, node, bounds[i], bounds[i + 1], g, S - i),
              stage_memory(layers, node, bounds[i], bounds[i + 1], g, S - i))
        for i in range(S))
    # after the last microbatch each GPU all-reduces its gradient shard with the matching shards
    # of the other pipelines (ring over the inter-node links; (p−1)/p ≤ 1 taken as 1)
    grad = max(sum(l.grad_bytes for l in layers[s.first:s.end]) / g for s in stages)
    return PipelineTemplate(nodes=n, gpus_per_stage=g, stages=stages, microbatches=m,
                            sync_s=2.0 * grad / node.inter_bw)


def generate_templates(layers, node: NodeSpec, max_nodes: int, microbatches: int,
                       min_nodes: int = 1) -> TemplateSet:
    """Exact templates for every node count in [n0, max_nodes].

    n0 is the fewest nodes (≥ min_nodes) for which some plan fits in memory; ``microbatches`` is
    the per-pipeline count the stage split is optimised for (it only decides the width g and the
    trade between the bottleneck and the transfers; ``iteration_time`` is exact for any count).
    """
    layers = tuple(layers)
    if not layers:
        raise ValueError("the model has no layers")
    if microbatches < 1:
        raise ValueError(f"microbatches must be >= 1, got {microbatches}")
    if max_nodes < min_nodes or min_nodes < 1:
        raise ValueError(f"need 1 <= min_nodes <= max_nodes, got {min_nodes}..{max_nodes}")
    sizes = list(range(min_nodes, max_nodes + 1))
    best: dict[int, tuple[float, int, list[int]]] = {}
    for g in sorted(node.widths(), reverse=True):  # wider first: ties keep the wider stages
        w = _Width(layers, node, g)
        for n, (obj, bounds) in _best_for_width(w, sizes, microbatches).items():
            t = w.base_total + obj
            if n not in best or t < best[n][0] * (1 - 1e-12):
                best[n] = (t, g, bounds)
    if not best:
        raise ValueError(
            f"no pipeline of {min_nodes}..{max_nodes} nodes ({node.gpus_per_node} GPUs of "
            f"{node.usable_bytes / 1e9:.1f} GB usable each) holds the {len(layers)}-layer model "
            f"with its training state and activations")
    n0 = min(best)
    templates, infeasible = {}, {}
    for n in range(n0, max_nodes + 1):
        if n in best:
            _, g, bounds = best[n]
            templates[n] = _make_template(layers, node, n, g, bounds, microbatches)
        elif n > len(layers):
            infeasible[n] = f"{n} nodes need >= {n} stages but the model has {len(layers)} layers"
        else:
            infeasible[n] = "no stage split fits in GPU memory"
    return TemplateSet(layers, node, n0, templates, infeasible)


def pipeline_templates(layers, node: NodeSpec, total_nodes: int, f: int, microbatches: int) -> TemplateSet:
    """Templates for [n0, N − f·n0]: the largest size that still leaves room for f more
    minimum-size pipelines, so f node failures always leave ≥ f+1 pipelines' worth of nodes."""
    if f < 0:
        raise ValueError(f"f must be >= 0, got {f}")
    probe = generate_templates(layers, node, total_nodes, microbatches)  # n0 needs the search
    n0 = probe.n0
    if (f + 1) * n0 > total_nodes:
        raise ValueError(f"f={f} needs at least (f+1)·n0 = {(f + 1) * n0} nodes (n0 = {n0}), "
                         f"have {total_nodes}")
    top = total_nodes - f * n0
    keep = {n: t for n, t in probe.templates.items() if n <= top}
    why = {n: r for n, r in probe.infeasible.items() if n <= top}
    return TemplateSet(probe.layers, node, n0, keep, why)


# ---- adapter from the shared specs and cost model -----------------------------------------

def layer_costs_from_spec(model, cluster, microbatch_size: int = 1, cost_model=None):
    """(list[LayerCost], NodeSpec) for a ``ModelSpec`` on a ``ClusterSpec`` via ``CostModel``.

    Layers are taken as one chain (branches, then the LLM), as a pipeline runs them; times and
    activation bytes are the cost model's frozen-aware figures for one microbatch on one GPU.
    """
    from .cost import COLLECTIVE_EFF, GRAD_BYTES, OPTIM_BYTES, CostModel, grad_needs
    from .spec import DTYPE_BYTES

    cm = cost_model or CostModel(cluster)
    needs = grad_needs(model)
    out = []
    for l in model.all_layers():
        nd = needs[l.name]
        f, b, w = cm.layer_times(l, nd, microbatch_size, 1)
        out.append(LayerCost(
            name=l.name, fwd_s=f, bwd_s=b + w, param_bytes=l.params * DTYPE_BYTES,
            grad_bytes=l.params * GRAD_BYTES if nd.wgrad else 0.0,
            optim_bytes=l.params * OPTIM_BYTES if nd.wgrad else 0.0,
            act_bytes=cm.layer_act_bytes(l, nd, microbatch_size, 1),
            out_bytes=microbatch_size * l.out_bytes))
    node = NodeSpec(gpus_per_node=cluster.gpus_per_node, gpu_memory_bytes=cluster.gpu.memory_bytes,
                    intra_bw=cluster.intra_node_bw * COLLECTIVE_EFF,
                    inter_bw=cluster.inter_node_bw * COLLECTIVE_EFF,
                    p2p_latency_s=cluster.p2p_latency_s, reserved_bytes=cluster.reserved_bytes)
    return out, node


def brute_force_template(layers, node: NodeSpec, nodes: int, microbatches: int):
    """(T, g, bounds) by enumerating every width and every cut; for tests on small cases."""
    import itertools

    layers = tuple(layers)
    L, best = len(layers), None
    for g in node.widths():
        S = nodes * (node.gpus_per_node // g)
        if S > L:
            continue
        for cuts in itertools.combinations(range(1, L), S - 1):
            bounds = (0,) + cuts + (L,)
            ok, times = True, []
            for i in range(S):
                r = S - i
                if stage_memory(layers, node, bounds[i], bounds[i + 1], g, r) > node.usable_bytes:
                    ok = False
                    break
                times.append(stage_time(layers, node, bounds[i], bounds[i + 1], g, r))
            if ok:
                t = pipeline_time(times, microbatches)
                if best is None or t < best[0]:
                    best = (t, g, bounds)
    return best


__all__ = ["LayerCost", "NodeSpec", "Stage", "PipelineTemplate", "TemplateSet", "generate_templates",
           "pipeline_templates", "layer_costs_from_spec", "stage_time", "stage_memory", "pipeline_time",
           "brute_force_template"]

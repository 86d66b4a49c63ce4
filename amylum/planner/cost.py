"""The one cost model: shared by partitioner, search, simulator and profiler.

Frozen-aware (DESIGN.md §4.6):
- a frozen layer has no weight gradient (W);
- a layer with nothing trainable upstream needs no input gradient (B), because nobody consumes it;
  so a frozen encoder in front of a trainable projector has no backward at all.
Memory: bf16 weights for every parameter; fp32 grads + (fp32 master, Adam m, v) for trainable ones
only, the optimizer part sharded over DP (ZeRO-1); activations per in-flight microbatch, fewer for
layers that only need B; activation checkpointing keeps only layer inputs and recomputes forward.
"""

from __future__ import annotations

from dataclasses import dataclass

from .spec import DTYPE_BYTES, ClusterSpec, LayerSpec, ModelSpec

GRAD_BYTES = 4  # fp32 gradient accumulation buffers (and what DP all-reduces)
OPTIM_BYTES = 12  # fp32 master weights + Adam m and v
COLLECTIVE_EFF = 0.8  # achieved fraction of link bandwidth in NCCL rings


@dataclass(frozen=True)
class GradNeeds:
    igrad: bool  # must compute the gradient w.r.t. its input
    wgrad: bool  # must compute the gradient w.r.t. its weights

    @property
    def any(self) -> bool:
        return self.igrad or self.wgrad


def grad_needs(model: ModelSpec) -> dict[str, GradNeeds]:
    """Which backward work each layer needs, from trainable flags and the model's DAG.

    A layer needs its input gradient iff some layer upstream of it is trainable. Upstream of a
    branch layer: earlier layers of its branch. Upstream of LLM layer i: LLM layers before i, plus
    every branch layer when i is at or after the merge point.
    """
    out: dict[str, GradNeeds] = {}
    any_branch_trainable = False
    for b in model.branches:
        seen = False
        for l in b.layers:
            out[l.name] = GradNeeds(igrad=seen, wgrad=l.trainable)
            seen = seen or l.trainable
        any_branch_trainable = any_branch_trainable or seen
    seen = False
    for i, l in enumerate(model.llm):
        upstream = seen or (i >= model.merge_index and any_branch_trainable)
        out[l.name] = GradNeeds(igrad=upstream, wgrad=l.trainable)
        seen = seen or l.trainable
    return out


@dataclass(frozen=True)
class StageCost:
    """Per-microbatch times (s) and per-GPU memory (bytes) of one stage."""

    f: float
    b: float  # input-gradient (includes recompute under checkpointing)
    w: float  # weight-gradient
    act_bytes: float  # stored per in-flight microbatch
    transient_bytes: float  # working set of the layer being computed
    static_bytes: float  # weights, grads, optimizer state, reserved
    grad_bytes: float  # bytes this GPU all-reduces over DP per iteration
    out_bytes: float  # bytes sent downstream per microbatch
    has_bwd: bool  # any B or W work
    has_w: bool

    @property
    def total(self) -> float:
        return self.f + self.b + self.w


def _is_block(layer: LayerSpec) -> bool:
    return layer.kind.endswith(".decoder") or layer.kind.endswith(".layer")


class CostModel:
    """Analytic times (FLOPs over an achievable rate), calibrated per layer kind by a profile."""

    def __init__(self, cluster: ClusterSpec, profile=None, checkpointing: bool = False):
        self.cluster = cluster
        self.profile = profile
        self.checkpointing = checkpointing

    # ---- compute -------------------------------------------------------------------------
    def _rate(self, layer: LayerSpec, what: str) -> float:
        if self.profile is not None:
            r = self.profile.rate(layer.kind, what)
            if r is not None:
                return r
        g = self.cluster.gpu
        return g.peak_flops * g.efficiency

    def layer_times(self, layer: LayerSpec, needs: GradNeeds, mb: int, tp: int) -> tuple[float, float, float]:
        """(forward, input-grad, weight-grad) seconds for ``mb`` samples on ``tp`` GPUs."""
        n = mb * layer.tokens
        ov = self.cluster.gpu.layer_overhead_s
        tp_comm = 0.0
        if tp > 1 and _is_block(layer):
            # two all-reduces (attention out, MLP out) of the residual stream per direction
            tp_comm = 2 * self.allreduce_time(n * layer.hidden * DTYPE_BYTES, tp, inter=False)
        f = n * layer.fwd_flops / (tp * self._rate(layer, "fwd")) + ov + tp_comm
        b = w = 0.0
        if needs.igrad:
            b = n * layer.igrad_flops / (tp * self._rate(layer, "igrad")) + ov + tp_comm
        if needs.wgrad:
            w = n * layer.wgrad_flops / (tp * self._rate(layer, "wgrad")) + ov
        if self.checkpointing and needs.any:
            b += f  # recompute the forward before the backward
        return f, b, w

    # ---- memory --------------------------------------------------------------------------
    def layer_act_bytes(self, layer: LayerSpec, needs: GradNeeds, mb: int, tp: int) -> float:
        """Bytes kept per microbatch from forward to backward (sequence parallel divides by tp)."""
        if not needs.any:
            return 0.0
        n = mb * layer.tokens
        if self.checkpointing:
            return n * layer.hidden * DTYPE_BYTES / tp
        per_tok = layer.act_bytes if needs.wgrad else layer.act_bytes_igrad
        return n * per_tok / tp

    def static_parts(self, layers, needs: dict[str, GradNeeds], tp: int) -> tuple[float, float]:
        """(weights + grads, optimizer state before DP sharding) per GPU, without reserved memory."""
        wg = opt = 0.0
        for l in layers:
            p = l.params / tp
            wg += p * DTYPE_BYTES
            if needs[l.name].wgrad:
                wg += p * GRAD_BYTES
                opt += p * OPTIM_BYTES
        return wg, opt

    def static_bytes(self, layers, needs: dict[str, GradNeeds], tp: int, dp: int) -> float:
        wg, opt = self.static_parts(layers, needs, tp)
        return self.cluster.reserved_bytes + wg + opt / dp

    # ---- stages --------------------------------------------------------------------------
    def stage_cost(self, layers, needs: dict[str, GradNeeds], mb: int, tp: int, dp: int = 1) -> StageCost:
        f = b = w = act = trans = grad = 0.0
        has_bwd = has_w = False
        for l in layers:
            nd = needs[l.name]
            lf, lb, lw = self.layer_times(l, nd, mb, tp)
            f, b, w = f + lf, b + lb, w + lw
            act += self.layer_act_bytes(l, nd, mb, tp)
            full = mb * l.tokens * l.act_bytes / tp  # what one layer holds while it runs
            trans = max(trans, full)
            if nd.wgrad:
                grad += l.params / tp * GRAD_BYTES
            has_bwd = has_bwd or nd.any
            has_w = has_w or nd.wgrad
        out = mb * layers[-1].out_bytes if layers else 0.0
        return StageCost(f=f, b=b, w=w, act_bytes=act, transient_bytes=trans,
                         static_bytes=self.static_bytes(layers, needs, tp, dp), grad_bytes=grad,
                         out_bytes=out, has_bwd=has_bwd, has_w=has_w)

    # ---- communication -------------------------------------------------------------------
    def p2p_time(self, nbytes: float, inter: bool) -> float:
        bw = self.cluster.inter_node_bw if inter else self.cluster.intra_node_bw
        return self.cluster.p2p_latency_s + nbytes / (bw * COLLECTIVE_EFF)

    def allreduce_time(self, nbytes: float, n: int, inter: bool) -> float:
        if n <= 1 or nbytes <= 0:
            return 0.0
        bw = self.cluster.inter_node_bw if inter else self.cluster.intra_node_bw
        return 2 * (n - 1) / n * nbytes / (bw * COLLECTIVE_EFF) + self.cluster.p2p_latency_s * (n - 1)

    def dp_sync_time(self, cost: StageCost, dp: int, tp: int) -> float:
        # a stage's DP peers are laid out next to each other (tp inner, dp next); they share a node
        # only when dp·tp GPUs fit in one
        inter = dp * tp > self.cluster.gpus_per_node
        return self.allreduce_time(cost.grad_bytes, dp, inter)

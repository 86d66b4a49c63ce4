"""The one cost model: shared by partitioner, search, simulator and profiler.

Frozen-aware (DESIGN.md §4.6):
- a frozen layer has no weight gradient (W);
- a layer with nothing trainable upstream needs no input gradient (B), because nobody consumes it;
  so a frozen encoder in front of a trainable projector has no backward at all.
Memory: bf16 weights for every parameter; fp32 grads + (fp32 master, Adam m, v) for trainable ones
only, the optimizer part sharded over DP (ZeRO-1); activations per in-flight microbatch, fewer for
layers that only need B; activation checkpointing keeps only layer inputs and recomputes forward.

Context parallelism (``cp`` > 1, LLM layers only; encoders run whole on every CP rank, as the
runtime does): a layer's per-token work is split over the cp ranks and multiplied by the
whole-layer max/mean of the CP token assignment (``cp_imbalance``, from ``cp_cost``: the
balanced policy on the sequence's mask), each decoder layer all-gathers K/V in the forward and
reduce-scatters dK/dV in the backward, activations are divided by cp plus the remote K/V kept
for the backward, and gradients are reduced over dp × cp ranks (optimizer state sharded so).
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
    cp: int = 1  # context-parallel degree: gradients are reduced over dp × cp ranks

    @property
    def total(self) -> float:
        return self.f + self.b + self.w


def _is_block(layer: LayerSpec) -> bool:
    return layer.kind.endswith(".decoder") or layer.kind.endswith(".layer")


class CostModel:
    """Analytic times (FLOPs over an achievable rate), calibrated per layer kind by a profile."""

    def __init__(self, cluster: ClusterSpec, profile=None, checkpointing: bool = False,
                 cp_imbalance: dict[int, float] | None = None):
        self.cluster = cluster
        self.profile = profile
        self.checkpointing = checkpointing
        # whole-layer max/mean of the CP token assignment per CP degree (cp_cost.cp_imbalance);
        # a degree not listed is taken as perfectly balanced
        self.cp_imbalance = dict(cp_imbalance or {})

    def _cp(self, layer: LayerSpec, cp: int) -> int:
        """The CP degree that applies to ``layer``: only the LLM's layers are split."""
        return cp if layer.module == "llm" else 1

    def kv_exchange_time(self, layer: LayerSpec, mb: int, tp: int, cp: int) -> float:
        """One direction of a decoder layer's K/V all-gather over ``cp`` ranks (0 without CP).

        Every rank receives the other ranks' K/V (each TP rank its KV heads); the parts are
        padded to the largest rank's count, taken as ``imbalance`` × the mean. The CP group
        spans nodes when tp × cp GPUs do not fit in one.
        """
        cp = self._cp(layer, cp)
        if cp <= 1 or not _is_block(layer):
            return 0.0
        kv = layer.kv_bytes or 2 * layer.hidden * DTYPE_BYTES  # no K/V width given: MHA (an upper bound)
        part = mb * layer.tokens / cp * self.cp_imbalance.get(cp, 1.0) * kv / tp
        inter = tp * cp > self.cluster.gpus_per_node
        bw = self.cluster.inter_node_bw if inter else self.cluster.intra_node_bw
        return (cp - 1) * part / (bw * COLLECTIVE_EFF) + self.cluster.p2p_latency_s * (cp - 1)

    # ---- compute -------------------------------------------------------------------------
    def _rate(self, layer: LayerSpec, what: str) -> float:
        if self.profile is not None:
            r = self.profile.rate(layer.kind, what)
            if r is not None:
                return r
        g = self.cluster.gpu
        return g.peak_flops * g.efficiency

    def layer_times(self, layer: LayerSpec, needs: GradNeeds, mb: int, tp: int,
                    cp: int = 1) -> tuple[float, float, float]:
        """(forward, input-grad, weight-grad) seconds for ``mb`` samples on ``tp`` GPUs (× ``cp`` CP ranks)."""
        cp = self._cp(layer, cp)
        # tokens of the slowest CP rank (in work): the mean share times the assignment's max/mean
        n = mb * layer.tokens / cp * (self.cp_imbalance.get(cp, 1.0) if cp > 1 else 1.0)
        ov = self.cluster.gpu.layer_overhead_s
        tp_comm = 0.0
        if tp > 1 and _is_block(layer):
            # two all-reduces (attention out, MLP out) of the residual stream per direction
            tp_comm = 2 * self.allreduce_time(n * layer.hidden * DTYPE_BYTES, tp, inter=False)
        kv = self.kv_exchange_time(layer, mb, tp, cp)
        f = n * layer.fwd_flops / (tp * self._rate(layer, "fwd")) + ov + tp_comm + kv
        b = w = 0.0
        if needs.igrad:
            b = n * layer.igrad_flops / (tp * self._rate(layer, "igrad")) + ov + tp_comm
        if needs.wgrad:
            w = n * layer.wgrad_flops / (tp * self._rate(layer, "wgrad")) + ov
        if needs.any and kv:
            # dK/dV go back to their owners (reduce-scatter); with B and W split it belongs to B
            # when there is one (W of the K/V projections waits for it either way)
            if needs.igrad:
                b += kv
            else:
                w += kv
        if self.checkpointing and needs.any:
            b += f  # recompute the forward (and its K/V all-gather) before the backward
        return f, b, w

    # ---- memory --------------------------------------------------------------------------
    def layer_act_bytes(self, layer: LayerSpec, needs: GradNeeds, mb: int, tp: int, cp: int = 1) -> float:
        """Bytes kept per microbatch from forward to backward (sequence parallel divides by tp).

        Under CP a rank keeps its tokens' activations plus the other ranks' K/V that its
        attention saved for the backward (all-gather: the whole sequence's K/V).
        """
        if not needs.any:
            return 0.0
        cp = self._cp(layer, cp)
        n = mb * layer.tokens
        if self.checkpointing:
            return n * layer.hidden * DTYPE_BYTES / (tp * cp)
        per_tok = layer.act_bytes if needs.wgrad else layer.act_bytes_igrad
        return n * per_tok / (tp * cp) + self.remote_kv_bytes(layer, mb, tp, cp)

    def remote_kv_bytes(self, layer: LayerSpec, mb: int, tp: int, cp: int) -> float:
        """Other ranks' K/V one CP rank holds for a decoder layer (0 without CP)."""
        cp = self._cp(layer, cp)
        if cp <= 1 or not _is_block(layer):
            return 0.0
        kv = layer.kv_bytes or 2 * layer.hidden * DTYPE_BYTES
        return mb * layer.tokens * (cp - 1) / cp * kv / tp

    def layer_transient_bytes(self, layer: LayerSpec, mb: int, tp: int, cp: int = 1) -> float:
        """What one layer holds while it runs: its tokens' full activations plus the gathered K/V."""
        cp = self._cp(layer, cp)
        return mb * layer.tokens * layer.act_bytes / (tp * cp) + self.remote_kv_bytes(layer, mb, tp, cp)

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
    def stage_cost(self, layers, needs: dict[str, GradNeeds], mb: int, tp: int, dp: int = 1,
                   cp: int = 1) -> StageCost:
        f = b = w = act = trans = grad = 0.0
        has_bwd = has_w = False
        for l in layers:
            nd = needs[l.name]
            lf, lb, lw = self.layer_times(l, nd, mb, tp, cp)
            f, b, w = f + lf, b + lb, w + lw
            act += self.layer_act_bytes(l, nd, mb, tp, cp)
            trans = max(trans, self.layer_transient_bytes(l, mb, tp, cp))
            if nd.wgrad:
                grad += l.params / tp * GRAD_BYTES
            has_bwd = has_bwd or nd.any
            has_w = has_w or nd.wgrad
        out = mb * layers[-1].out_bytes if layers else 0.0
        return StageCost(f=f, b=b, w=w, act_bytes=act, transient_bytes=trans,
                         static_bytes=self.static_bytes(layers, needs, tp, dp * cp), grad_bytes=grad,
                         out_bytes=out, has_bwd=has_bwd, has_w=has_w, cp=cp)

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
        # a stage's DP peers are laid out next to each other (tp inner, cp, then dp); they share a
        # node only when dp·cp·tp GPUs fit in one. CP ranks hold partial gradients of the same
        # parameters, so the reduction spans dp × cp ranks.
        peers = dp * cost.cp
        inter = peers * tp > self.cluster.gpus_per_node
        return self.allreduce_time(cost.grad_bytes, peers, inter)

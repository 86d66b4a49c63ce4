"""A lower bound on the iteration time of any plan, under the planner's own cost model.

``iteration_lower_bound(model, cluster, global_batch)`` is the "total work / GPUs" bound: the
GPU-seconds of compute one iteration needs at the cheapest rate the planner's options allow,
divided by the number of GPUs. No plan that the search (``search.py``) or the baselines
(``baselines.py``) can produce is faster in simulation (``simulate.py``). It answers "how much
faster than the best baseline could any plan be, at most".

Why it is a bound. In the simulator every stage runs its action list serially on its own clock
from time 0, and every stage (of width tp × cp GPUs, in each of dp replicas) runs F, B and W of
each of its layers for all m microbatches of mb samples; the 1F1B, GPipe and zero-bubble lists
all do (the W split only moves W). So the iteration time T is at least every stage's busy time,
and the GPU-seconds of the whole cluster, world × T, are at least the sum over stages of
dp × tp × cp × m × (F + B + W). Regrouped per layer that is, with dp × m × mb ≥ global batch
samples processed, at least global_batch × Σ_layers c_min(layer), where c_min is the layer's
GPU-seconds per sample, width × (f + b + w) / mb, minimised over every (TP, CP, microbatch
size, checkpointing) option (``CostModel.layer_times``, frozen-aware exactly as the cost model
charges: no W for a frozen layer, no B for a layer with nothing trainable upstream, recompute
under checkpointing). Taking the minimum per layer independently can only lower the sum, so it
covers plans that mix options across stages. Hence T ≥ global_batch × Σ c_min / world.

Assumptions (each one only makes the bound lower than any real plan):
- perfect balance: the work spreads over all ``world`` GPUs with no idle GPU and no
  integrality (a GPU may do a fraction of a sample's layer);
- no pipeline bubble, no waiting on dependencies (the critical path of one microbatch is not
  counted);
- no memory limit: every layer takes its cheapest option, e.g. no checkpointing and the largest
  microbatch, even where that would not fit;
- exactly ``global_batch`` samples (plans round up to dp × m × mb ≥ global batch);
- context parallelism at perfect balance (max/mean 1, unless ``cp_imbalance`` is given; the
  search's measured imbalances are ≥ 1, so charging 1 is the cheaper case).

Costs it omits (real plans pay them, so they only make real plans slower):
- the DP gradient all-reduce (``CostModel.dp_sync_time``, not overlapped in the simulator);
- point-to-point activation/gradient transfers between stages, and waits on them;
- the pipeline bubble (warm-up, cool-down, join waits of modality-parallel DAGs);
- idle GPUs a plan leaves unused (world not divisible by the replica width) and stages that
  wait on the slowest stage (imbalance of a partition).

TP all-reduces, CP K/V exchanges and the per-layer launch overhead are *not* omitted: they are
part of ``layer_times`` and so of each option's cost; the minimum over options simply picks
the cheapest (usually TP 1, CP 1, the largest microbatch, no checkpointing).

The option grid defaults to the union of what the search (``SearchOptions``) and the baselines
offer: TP (1, 2, 4, 8) up to the node size, CP (1, 2, 4, 8), microbatch sizes (1, 2),
checkpointing off and on. A plan with a larger microbatch than those listed would pay a
smaller share of the per-layer overhead; pass its size in ``mb_choices`` to cover it.

Cost: one ``layer_times`` call per layer per option (a few thousand for the largest preset):
milliseconds, so it runs per grid cell.

A tighter bound, ``bounds_memory.shape_lower_bound``, charges most of what this one leaves out
(memory per stage, which forces TP and checkpointing; DP sync; padding to dp × m × mb samples;
the slowest stage; pipeline fill and drain) but covers only the plan shapes the search and the
baselines produce (one TP per chain, their stage counts and DP rule). This one covers any plan.
"""

from __future__ import annotations

from dataclasses import dataclass

from .baselines import BASELINE_MB, BASELINE_TP
from .cost import CostModel, grad_needs
from .search import SearchOptions
from .spec import ClusterSpec, LayerSpec, ModelSpec


@dataclass(frozen=True)
class LowerBound:
    """The bound and what it is made of."""

    seconds: float  # lower bound on the iteration time of any plan
    gpu_seconds: float  # minimal compute GPU-seconds per iteration (= seconds × gpus)
    gpus: int
    by_module: dict  # module -> its share of gpu_seconds


def _default_grid(cluster: ClusterSpec) -> tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]:
    so = SearchOptions()
    tps = tuple(sorted({t for t in (*so.tp_choices, *BASELINE_TP) if t <= cluster.gpus_per_node}))
    cps = tuple(sorted({1, *so.cp_choices}))
    mbs = tuple(sorted({*so.mb_choices, *BASELINE_MB}))
    return tps, cps, mbs


def layer_min_gpu_seconds(cms: list[CostModel], layer: LayerSpec, needs, tps, cps, mbs) -> float:
    """The cheapest GPU-seconds per sample of one layer (F + B + W) over the options.

    A stage of width tp × cp charges every GPU of it for the layer's time, also for an encoder
    layer that the cost model runs whole on every CP rank.
    """
    best = float("inf")
    for cm in cms:
        for tp in tps:
            for cp in cps:
                for mb in mbs:
                    f, b, w = cm.layer_times(layer, needs, mb, tp, cp)
                    best = min(best, tp * cp * (f + b + w) / mb)
    return best


def lower_bound(model: ModelSpec, cluster: ClusterSpec, global_batch: int, *, profile=None,
                tp_choices: tuple[int, ...] | None = None, cp_choices: tuple[int, ...] | None = None,
                mb_choices: tuple[int, ...] | None = None, checkpointing: tuple[bool, ...] = (False, True),
                cp_imbalance: dict[int, float] | None = None) -> LowerBound:
    """Total minimal compute of one iteration over all GPUs (see the module docstring).

    ``model`` carries the freezing (``spec.freeze``); ``profile`` and ``cp_imbalance`` are what
    the planner's cost model is built with (defaults: none, perfectly balanced CP).
    """
    if global_batch < 1:
        raise ValueError(f"global batch must be >= 1, got {global_batch}")
    d_tps, d_cps, d_mbs = _default_grid(cluster)
    tps = tuple(tp_choices or d_tps)
    cps = tuple(cp_choices or d_cps)
    mbs = tuple(mb_choices or d_mbs)
    if not tps or not cps or not mbs or not checkpointing:
        raise ValueError("every option grid needs at least one choice")
    cms = [CostModel(cluster, profile, checkpointing=ck, cp_imbalance=cp_imbalance) for ck in checkpointing]
    needs = grad_needs(model)
    by_module: dict[str, float] = {}
    for l in model.all_layers():
        c = global_batch * layer_min_gpu_seconds(cms, l, needs[l.name], tps, cps, mbs)
        by_module[l.module] = by_module.get(l.module, 0.0) + c
    total = sum(by_module.values())
    world = cluster.world_size
    return LowerBound(seconds=total / world, gpu_seconds=total, gpus=world, by_module=by_module)


def iteration_lower_bound(model: ModelSpec, cluster: ClusterSpec, global_batch: int, **kw) -> float:
    """Seconds: no plan the planner or the baselines can produce simulates faster than this."""
    return lower_bound(model, cluster, global_batch, **kw).seconds

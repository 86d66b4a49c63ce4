"""Baseline plans the benchmark compares against, simulated with the same cost model.

- ``megatron``: frozen-unaware, layer-balanced pipelines with fixed stage counts per module,
  e.g. (LLM, vision, audio) = (4, 2, 2), layers split evenly by count inside each module;
- ``cornstarch``: Cornstarch's hand choice (5, 1, 1), layers split evenly inside each module;
- ``colocated``: every encoder on the LLM's first stage (torchtitan style), LLM layers split evenly.

Each uses one TP size for all modules (Cornstarch's limit) and DP = ⌊world / GPUs per replica⌋;
TP, microbatch size, checkpointing (and for ``colocated`` the stage count) are the best of a small
grid under the simulator, so a baseline is as strong as its fixed rule allows. Execution is the
same frozen-aware runtime for everyone: only the planning differs.
"""

from __future__ import annotations

from .cost import CostModel
from .candidates import ChainOption, build_plan, even_option, replica_dims, template_options
from .simulate import SimResult, simulate
from .spec import ClusterSpec, ModelSpec

BASELINES = ("megatron", "cornstarch", "colocated")
STAGE_COUNTS = {"megatron": (4, 2), "cornstarch": (5, 1)}  # (LLM, each encoder)


def _chain_options(model: ModelSpec, kind: str, tp: int, llm_pp: int) -> tuple[str, list[ChainOption]] | None:
    if kind == "colocated":
        if not model.branches:
            o = even_option(model, "llm", tp, llm_pp)
            return None if o is None else ("modality_parallel", [o])
        o = even_option(model, "colocated", tp, llm_pp)
        return None if o is None else ("colocated", [o])
    opts = template_options(model, *STAGE_COUNTS[kind], tp)
    return None if opts is None else ("modality_parallel", opts)


# the option grid every baseline chooses from (planner/bounds.py covers it too)
BASELINE_TP = (1, 2, 4, 8)
BASELINE_MB = (1, 2)


def baseline_plan(model: ModelSpec, cluster: ClusterSpec, global_batch: int, kind: str,
                  tp_choices=BASELINE_TP, mb_choices=BASELINE_MB, colocated_pp=(1, 2, 4, 8)):
    """The best plan the baseline's rule allows, and its simulation; None if nothing fits."""
    if kind not in BASELINES:
        raise ValueError(f"unknown baseline {kind!r}; choose from {BASELINES}")
    world = cluster.world_size
    best: tuple[SimResult, object] | None = None
    pps = colocated_pp if kind == "colocated" else (None,)
    cms = {ck: CostModel(cluster, checkpointing=ck) for ck in (False, True)}
    for tp in tp_choices:
        if tp > cluster.gpus_per_node:
            continue
        for pp in pps:
            built = _chain_options(model, kind, tp, pp or 1)
            if built is None:
                continue
            placement, opts = built
            R = sum(o.gpus for o in opts)
            if R > world:
                continue
            for mb in mb_choices:
                dp, m = replica_dims(world, R, global_batch, mb)
                for ck in (False, True):
                    plan = build_plan(model, opts, placement, dp, mb, m, global_batch, ck, "1f1b")
                    sim = simulate(plan, model, cluster, cost_model=cms[ck], validate=False)
                    if sim.fits:
                        if best is None or sim.iteration_s < best[0].iteration_s:
                            best = (sim, plan)
                        break  # checkpointing only where the plain plan does not fit
    return None if best is None else (best[1], best[0])

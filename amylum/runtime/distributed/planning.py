"""The plan a distributed run executes: read from a plan file or asked of the planner, and checked
against the config's model, the global batch, the memory and the launched world size, all before
any process group exists (a plan that cannot run fails with its reasons, not with a hang).

Batch arithmetic: the config's global batch per optimizer step is ``training.batch_size *
training.grad_accum`` samples, as on one process (so a run compares with ``amylum train``). The
plan splits it: ``dp`` replicas each read ``global / dp`` samples per step and cut them into the
plan's ``num_microbatches`` microbatches (with ``data.balance`` set, the loader splits the global
batch into ``dp x num_microbatches`` microbatches by work instead: runtime/distributed/data.py).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from amylum.config import Config
from amylum.parallel.blocks import find_layer_list
from amylum.parallel.layout import LayoutError, RuntimeLayout, layout_from_plan
from amylum.runtime.distributed.stage_actions import runtime_stage_graph, zero_bubble_lists


@dataclass(frozen=True)
class CheckedPlan:
    plan: object  # amylum.planner.plan.Plan
    layout: RuntimeLayout
    source: str  # the plan file, or "planner"
    schedule: str  # what the executor runs: "1f1b", "gpipe" or "zb" (W split; stage_actions.py)
    model_spec: object  # the plan's ModelSpec and ClusterSpec (written beside the run as plan.json)
    cluster: object
    notes: tuple[str, ...] = ()
    zb_lists: dict | None = None  # a zb plan's action lists, checked against the runtime stage graph


def global_batch(cfg: Config) -> int:
    return cfg.training.batch_size * cfg.training.grad_accum


def _meta_model(cfg: Config):
    """The config's model on the meta device (no memory), with its freeze settings."""
    from amylum.runtime.build import build_model

    return build_model(cfg, vocab_size=None, device=torch.device("meta"))


def _cluster_gpu(device_type: str) -> str:
    """The planner's GPU type for this machine: the CPU entry without a GPU, else by name."""
    if device_type != "cuda":
        return "CPU"
    name = torch.cuda.get_device_name().upper()
    for gpu in ("H200", "H100", "A100", "A40"):
        if gpu in name:
            return gpu
    return "H100"  # an unknown GPU: plan with H100 figures (memory checked again by the allocator)


def ask_planner(cfg: Config, world_size: int, gpus_per_node: int, device_type: str):
    """A plan for the config's model on ``world_size`` ranks (the search `amylum plan` runs)."""
    from amylum.planner.module import model_spec_from_module
    from amylum.planner.search import SearchOptions, search
    from amylum.planner.spec import ClusterSpec

    spec = model_spec_from_module(_meta_model(cfg), text_tokens=cfg.data.max_length, name=cfg.model.preset)
    cluster = ClusterSpec.of(world_size, _cluster_gpu(device_type), gpus_per_node)
    # Zero-bubble plans may win: the executor runs their lists with W split from B (stage_actions.py).
    result = search(spec, cluster, global_batch(cfg), SearchOptions())
    return result.plan, spec, cluster


def check_plan(cfg: Config, plan, plan_model, cluster, world_size: int, source: str) -> CheckedPlan:
    """Every reason ``plan`` cannot run this config on ``world_size`` ranks, as one LayoutError."""
    from amylum.planner.planfile import plan_errors

    errors: list[str] = []
    notes: list[str] = []
    if plan.model != cfg.model.preset:
        errors.append(f"the plan was made for model {plan.model!r}; the config trains {cfg.model.preset!r} "
                      f"(re-plan with `amylum plan --preset {cfg.model.preset}`)")
    # structure, ranks and memory, on the plan's own model and cluster description
    errors += plan_errors(plan, plan_model, cluster, check_memory=True)
    want = global_batch(cfg)
    if plan.global_batch != want:
        errors.append(f"the plan is for a global batch of {plan.global_batch} samples; the config's "
                      f"training.batch_size x grad_accum = {want} (re-plan with --global-batch {want} or change the config)")
    elif want % plan.dp:
        errors.append(f"the global batch {want} does not split evenly over dp {plan.dp} replicas")
    elif want // plan.dp < plan.num_microbatches:
        errors.append(f"each replica reads {want // plan.dp} samples per step, fewer than the plan's "
                      f"{plan.num_microbatches} microbatches")
    elif cfg.data.balance != "none" and want % (plan.dp * plan.num_microbatches):
        # The balanced loader's step is dp x num_microbatches micro-batches of a mean size: any
        # other global batch would hold other samples than one process's step.
        errors.append(f"data.balance = {cfg.data.balance!r}: the global batch {want} does not split into dp {plan.dp} "
                      f"x {plan.num_microbatches} microbatches of equal mean size")
    schedule = plan.schedule  # "zb" runs the simulator's zero-bubble lists (stage_actions.py)
    model = _meta_model(cfg)
    n_layers = len(find_layer_list(model.llm.get_decoder()))
    try:
        layout = layout_from_plan(plan, list(model.encoders), n_layers, world_size)
    except LayoutError as e:
        # layout_from_plan lists its reasons one per "  - " line, after a heading
        errors += [line.removeprefix("  - ") for line in str(e).splitlines()[1:]]
        layout = None
    if layout is not None:
        errors += _tied_errors(model, layout)
        for a in layout.assignments:
            if a.component in model.encoders and not any(p.requires_grad for p in model.encoders[a.component].parameters()):
                # Such a rank would have nothing to optimize or checkpoint.
                errors.append(f"stage {a.stage} runs the {a.component!r} branch, which is entirely frozen; "
                              "colocate frozen branches with the first LLM stage (`amylum plan --placement colocated`)")
    zb_lists = None
    if schedule == "zb" and layout is not None and not errors:
        # Before launch: lists made for other frozen flags would leave a RECV without its SEND.
        zb_lists, mismatches = zero_bubble_lists(runtime_stage_graph(layout, model), plan, plan_model, cluster)
        errors += [f"zero-bubble lists: {m} (was the plan made for another freezing scenario?)" for m in mismatches]
    if errors:
        raise LayoutError(f"plan {source} cannot run {cfg.model.preset} on {world_size} processes:\n  - "
                          + "\n  - ".join(errors))
    return CheckedPlan(plan, layout, source, schedule, plan_model, cluster, tuple(notes), zb_lists)


def _tied_errors(model, layout: RuntimeLayout) -> list[str]:
    from amylum.parallel.pipeline import LLM

    if not getattr(model.llm.config.get_text_config(), "tie_word_embeddings", False):
        return []
    llm = sorted((a for a in layout.assignments if a.component == LLM), key=lambda a: a.layers[0])
    first, last = llm[0].stage, llm[-1].stage
    widths = {len(layout.stage_ranks[s][0]) for s in (first, last)}
    if first != last and len(widths) > 1:
        return [f"tied embeddings: the first and last LLM stages ({first}, {last}) need the same TP width, "
                f"got {sorted(widths)}"]
    return []


def resolve_plan(cfg: Config, world_size: int, gpus_per_node: int, device_type: str) -> CheckedPlan:
    """``parallel.plan`` read and checked, or the planner's plan for this world size."""
    if cfg.parallel.plan:
        from amylum.planner.planfile import PlanError, read_plan

        try:
            plan, plan_model, cluster = read_plan(cfg.parallel.plan, validate=False)
        except PlanError as e:
            raise LayoutError(str(e)) from e
        return check_plan(cfg, plan, plan_model, cluster, world_size, cfg.parallel.plan)
    try:
        plan, plan_model, cluster = ask_planner(cfg, world_size, gpus_per_node, device_type)
    except ValueError as e:
        raise LayoutError(f"the planner found no plan for {cfg.model.preset} on {world_size} processes: {e}") from e
    if plan.world_size != world_size:
        raise LayoutError(f"the planner's best plan for {cfg.model.preset} uses {plan.world_size} of the "
                          f"{world_size} processes launched; launch {plan.world_size} or pass --plan")
    return check_plan(cfg, plan, plan_model, cluster, world_size, "from the planner")

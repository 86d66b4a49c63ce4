"""The training loader of one data-parallel replica under a plan.

``data.balance = "none"``: the replica reads a strided share of each global batch, which the
trainer cuts into the plan's microbatches. Any other value: a balanced ``ResumableLoader`` that
yields the replica's microbatches themselves, split by estimated work
(docs/microbatching.md). Every rank of every replica computes the same work table, the same
load profile and so the same assignment, from the records and the whole model: no
communication, and it must happen before the rank's stage is cut from the model (the cost
estimate reads every encoder and the whole LLM).
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
from torch import nn

from amylum.config import Config
from amylum.data.dataset import MultimodalDataset, ResumableLoader
from amylum.planner.workload import Features, WorkTable, coefficients_from_model, work_table
from amylum.runtime.distributed.planning import CheckedPlan, global_batch


def replica_loader(cfg: Config, dataset: MultimodalDataset, model: nn.Module, checked: CheckedPlan,
                   replica: int) -> ResumableLoader:
    """The loader of DP replica ``replica`` of the plan (call with the whole, uncut model)."""
    plan = checked.plan
    if cfg.data.balance == "none":
        # An epoch's last, short batch is dropped: every replica must run the plan's microbatch
        # count (its collectives and P2P messages are per microbatch).
        return ResumableLoader(dataset, batch_size=global_batch(cfg) // plan.dp, seed=cfg.job.seed,
                               max_length=cfg.data.max_length, drop_last=True, rank=replica, world_size=plan.dp)
    # The same coefficients and columns as one process (amylum.runtime.build.build_train_loader and
    # MultimodalDataset.work_table), so both trainers estimate the same work. The features are
    # kept: the load profile needs the dataset's mean sample too.
    coef = coefficients_from_model(model, mask="causal" if cfg.model.attention == "hf" else "multimodal")
    features = Features.from_metas(dataset.sample_metas(), modalities=coef.modalities)
    table = work_table(features, coef)
    profile = load_profile(checked, model, features, table) if cfg.data.balance == "hierarchical" else None
    # check_plan made sure the global batch splits into dp × num_microbatches micro-batches of
    # this mean size, so a step holds exactly the samples of one process's step.
    return ResumableLoader(dataset, batch_size=global_batch(cfg) // (plan.dp * plan.num_microbatches),
                           seed=cfg.job.seed, max_length=cfg.data.max_length, rank=replica, world_size=plan.dp,
                           balance=cfg.data.balance, microbatches=plan.num_microbatches, work=table,
                           profile=profile)


def load_profile(checked: CheckedPlan, model: nn.Module, features: Features, table: WorkTable) -> np.ndarray | None:
    """The plan's pipeline load profile (light fill and drain microbatches), or None for a plan of
    one stage, where no microbatch lies on the critical path more often than another."""
    from amylum.planner.load_profile import profile_from_plan

    plan = checked.plan
    if len(plan.stages) < 2:
        return None
    # The profile is shaped for the action lists the executor runs, B and W together; a zb plan's
    # on its 1F1B lists (profiles are defined for 1F1B and GPipe): the same forwards and backwards
    # in the same microbatch order, with W moved into waits, so the same fill and drain.
    runs = replace(plan, schedule="gpipe" if checked.schedule == "gpipe" else "1f1b", split_w=False)
    spec = mean_sample_spec(model, features, plan, checked.model_spec)
    return profile_from_plan(runs, spec, checked.cluster, plan.num_microbatches, (*table.modalities, "llm"))


def mean_sample_spec(model: nn.Module, features: Features, plan, plan_spec):
    """The model described for the dataset's mean sample (what one static plan is sized for), or
    the plan's own description when its layer names are not the model's (a hand-written plan)."""
    from amylum.planner.module import model_spec_from_module

    items = {m: max(1, round(float(features.items[m].mean()))) for m in model.encoders if m in features.items}
    spec = model_spec_from_module(model, text_tokens=max(1, round(float(features.text_tokens.mean()))), items=items)
    names = {layer.name for layer in spec.all_layers()}
    wanted = {name for stage in plan.stages for name in stage.layers}
    return spec if wanted <= names else plan_spec

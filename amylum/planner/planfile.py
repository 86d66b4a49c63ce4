"""Plan files: JSON written (TOML also read), validated with specific errors.

A plan file carries the plan, the model description and the cluster it was made for, so
``amylum simulate PLAN`` needs nothing else and a hand edit is checked against the same facts.
"""

from __future__ import annotations

import json
import tomllib
from dataclasses import asdict
from pathlib import Path

from .cost import CostModel
from .plan import PLACEMENTS, SCHEDULES, Plan, StagePlan
from .spec import ClusterSpec, ModelSpec

FORMAT = "amylum-plan/1"


class PlanError(ValueError):
    """A plan file that cannot be run; the message lists every problem found."""


def _plain(x):
    # tuples become lists so JSON and TOML writers see one sequence type
    if isinstance(x, dict):
        return {k: _plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_plain(v) for v in x]
    return x


def plan_to_dict(plan: Plan, model: ModelSpec, cluster: ClusterSpec) -> dict:
    return _plain({"format": FORMAT, "plan": asdict(plan), "model": model.to_dict(), "cluster": cluster.to_dict()})


def plan_from_dict(d: dict) -> tuple[Plan, ModelSpec, ClusterSpec]:
    if d.get("format") != FORMAT:
        raise PlanError(f"not an amylum plan file: format is {d.get('format')!r}, expected {FORMAT!r}")
    for key in ("plan", "model", "cluster"):
        if key not in d:
            raise PlanError(f"plan file lacks its [{key}] section")
    p = dict(d["plan"])
    try:
        stages = tuple(StagePlan(id=int(s["id"]), chain=str(s["chain"]), layers=tuple(s["layers"]),
                                 tp=int(s.get("tp", 1)), inputs=tuple(int(i) for i in s.get("inputs", ())),
                                 ranks=tuple(tuple(int(r) for r in rep) for rep in s.get("ranks", ())),
                                 cp=int(s.get("cp", 1)))
                       for s in p.pop("stages"))
        plan = Plan(stages=stages, **p)
    except (KeyError, TypeError) as e:
        raise PlanError(f"malformed plan section: {e}") from e
    return plan, ModelSpec.from_dict(d["model"]), ClusterSpec.from_dict(d["cluster"])


def write_plan(path: str | Path, plan: Plan, model: ModelSpec, cluster: ClusterSpec) -> Path:
    path = Path(path)
    if path.suffix == ".toml":
        raise PlanError("plan files are written as JSON (TOML is accepted on read); use a .json path")
    path.write_text(json.dumps(plan_to_dict(plan, model, cluster), indent=1) + "\n")
    return path


def read_plan(path: str | Path, validate: bool = True) -> tuple[Plan, ModelSpec, ClusterSpec]:
    path = Path(path)
    if not path.exists():
        raise PlanError(f"plan file {path} does not exist")
    text = path.read_text()
    try:
        d = tomllib.loads(text) if path.suffix == ".toml" else json.loads(text)
    except (json.JSONDecodeError, tomllib.TOMLDecodeError) as e:
        raise PlanError(f"{path}: cannot parse: {e}") from e
    plan, model, cluster = plan_from_dict(d)
    if validate:
        check_plan(plan, model, cluster)
    return plan, model, cluster


def plan_errors(plan: Plan, model: ModelSpec, cluster: ClusterSpec, check_memory: bool = True) -> list[str]:
    errs: list[str] = []
    if plan.placement not in PLACEMENTS:
        errs.append(f"placement {plan.placement!r} is not one of {PLACEMENTS}")
    if plan.schedule not in SCHEDULES:
        errs.append(f"schedule {plan.schedule!r} is not one of {SCHEDULES}")
    for f in ("dp", "microbatch_size", "num_microbatches", "global_batch"):
        if getattr(plan, f) < 1:
            errs.append(f"{f} must be >= 1, got {getattr(plan, f)}")
    if not errs and plan.dp * plan.microbatch_size * plan.num_microbatches < plan.global_batch:
        errs.append(f"dp {plan.dp} x microbatch {plan.microbatch_size} x {plan.num_microbatches} microbatches "
                    f"= {plan.dp * plan.microbatch_size * plan.num_microbatches} samples < global batch "
                    f"{plan.global_batch}")
    ids = [s.id for s in plan.stages]
    if len(set(ids)) != len(ids):
        errs.append(f"stage ids repeat: {sorted(i for i in set(ids) if ids.count(i) > 1)}")
    for s in plan.stages:
        for i in s.inputs:
            if i not in ids:
                errs.append(f"stage {s.id} takes input from stage {i}, which does not exist")
    errs += _layer_errors(plan, model)
    errs += _cp_errors(plan, model)
    errs += _rank_errors(plan, cluster)
    if errs or not check_memory:
        return errs
    from .simulate import simulate  # late: simulate needs a structurally valid plan

    try:
        sim = simulate(plan, model, cluster, cost_model=CostModel(cluster, checkpointing=plan.checkpointing))
    except ValueError as e:
        return [str(e)]
    limit = cluster.gpu.memory_bytes
    for sid, peak in sorted(sim.peak_mem.items()):
        if peak > limit:
            errs.append(f"stage {sid} needs {peak / 1e9:.1f} GB per GPU, {(peak - limit) / 1e9:.1f} GB over the "
                        f"{limit / 1e9:.1f} GB of a {cluster.gpu.name}")
    return errs


def _layer_errors(plan: Plan, model: ModelSpec) -> list[str]:
    errs = []
    owner: dict[str, list[int]] = {}
    for s in plan.stages:
        for n in s.layers:
            owner.setdefault(n, []).append(s.id)
        if not s.layers:
            errs.append(f"stage {s.id} has no layers")
    known = {l.name for l in model.all_layers()}
    for n, sids in owner.items():
        if n not in known:
            errs.append(f"layer {n!r} (stage {sids[0]}) is not in model {model.name}")
        elif len(sids) > 1:
            errs.append(f"layer {n} is duplicated: in stages {sids}")
    missing = [l.name for l in model.all_layers() if l.name not in owner]
    if missing:
        more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
        errs.append(f"layers missing from every stage: {', '.join(missing[:5])}{more}")
    if errs:
        return errs
    # each stage is a contiguous, in-order run of one chain, fed by the stage holding the layer before
    order = {}
    chains = [list(b.layers) for b in model.branches] + [list(model.llm)]
    colocated = plan.placement == "colocated"
    if colocated:
        chains = [[l for c in chains for l in c]]
    for ci, chain in enumerate(chains):
        for i, l in enumerate(chain):
            order[l.name] = (ci, i)
    stage_of = {n: sids[0] for n, sids in owner.items()}
    for s in plan.stages:
        pos = [order[n] for n in s.layers]
        if len({c for c, _ in pos}) > 1 or any(b[1] != a[1] + 1 for a, b in zip(pos, pos[1:])):
            errs.append(f"stage {s.id}: layers are not a contiguous in-order run of one chain "
                        f"({s.layers[0]} … {s.layers[-1]})")
            continue
        ci, first = pos[0]
        if first > 0:
            prev = stage_of[chains[ci][first - 1].name]
            if prev != s.id and prev not in s.inputs:
                errs.append(f"stage {s.id} starts at {s.layers[0]} but does not take input from stage {prev}, "
                            f"which holds the layer before it")
    if not colocated:
        head = stage_of[model.llm[min(model.merge_index, len(model.llm) - 1)].name]
        for b in model.branches:
            last = stage_of[b.layers[-1].name]
            if last not in plan.stage(head).inputs:
                errs.append(f"branch {b.name} ends on stage {last}, but the LLM stage {head} that consumes its "
                            f"features does not take input from it")
    return errs


def _cp_errors(plan: Plan, model: ModelSpec) -> list[str]:
    """CP degrees: powers of two, and only on stages that hold LLM layers (CP splits the LLM's sequence)."""
    errs = []
    llm = {l.name for l in model.llm}
    for s in plan.stages:
        if s.cp < 1 or s.cp & (s.cp - 1):
            errs.append(f"stage {s.id}: cp {s.cp} must be a power of two >= 1")
        elif s.cp > 1 and not any(n in llm for n in s.layers):
            errs.append(f"stage {s.id}: cp {s.cp} on a stage without LLM layers; context parallelism splits "
                        f"the LLM's sequence (encoders run whole on every CP rank)")
    return errs


def _rank_errors(plan: Plan, cluster: ClusterSpec) -> list[str]:
    errs = []
    g = cluster.gpus_per_node
    seen: dict[int, int] = {}
    for s in plan.stages:
        if s.tp < 1 or s.tp & (s.tp - 1) or g % s.tp:
            errs.append(f"stage {s.id}: tp {s.tp} must be a power of two dividing the {g} GPUs of a node")
        if len(s.ranks) != plan.dp:
            errs.append(f"stage {s.id} has {len(s.ranks)} replicas of ranks, but dp is {plan.dp}")
        for rep in s.ranks:
            if len(rep) != s.tp * max(s.cp, 1):
                errs.append(f"stage {s.id}: a replica has ranks {list(rep)}, expected {s.tp * max(s.cp, 1)} "
                            f"(tp {s.tp} x cp {s.cp})")
            else:
                for c in range(0, len(rep), s.tp):  # cp groups of tp adjacent ranks
                    group = rep[c : c + s.tp]
                    if len({r // g for r in group}) > 1:
                        errs.append(f"stage {s.id}: TP group {list(group)} spans nodes")
            for r in rep:
                if r in seen:
                    errs.append(f"rank {r} is used by stages {seen[r]} and {s.id}")
                seen[r] = s.id
    want = set(range(plan.world_size))
    got = set(seen)
    if plan.world_size > cluster.world_size:
        errs.append(f"world size {plan.world_size} exceeds the cluster's {cluster.world_size} GPUs")
    if got != want:
        extra = sorted(got - want)
        lack = sorted(want - got)
        detail = []
        if lack:
            detail.append(f"ranks {lack[:8]} have no stage")
        if extra:
            detail.append(f"ranks {extra[:8]} are outside the world")
        errs.append(f"the plan's ranks ({len(got)}) do not match world size {plan.world_size}: {'; '.join(detail)}")
    return errs


def check_plan(plan: Plan, model: ModelSpec, cluster: ClusterSpec, check_memory: bool = True) -> None:
    errs = plan_errors(plan, model, cluster, check_memory)
    if errs:
        raise PlanError("invalid plan:\n  " + "\n  ".join(errs))

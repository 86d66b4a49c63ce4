"""Configs, plan files and rank workers for the distributed-training tests (test_dist_train.py)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from amylum.config import Config, load_config
from amylum.planner.commands import load_model
from amylum.planner.plan import Plan, StagePlan
from amylum.planner.planfile import write_plan
from amylum.planner.spec import ClusterSpec


def small_config(run_dir: Path, *extra: str) -> Config:
    """tiny-valm on a small demo set: every test run is a few seconds of training. On the CPU with
    gloo even where a GPU exists (4 ranks would otherwise each ask for a GPU of their own)."""
    return load_config(None, [
        f"--job.run_dir={run_dir}", "--job.device=cpu", "--model.preset=tiny-valm", "--data.n_train=48", "--data.n_eval=0",
        "--training.steps=3", "--training.batch_size=8", "--training.warmup_steps=1", "--training.lr=0.003",
        "--metrics.log_every=1", "--metrics.progress_bar=false", "--metrics.tensorboard=false",
        "--metrics.report=false", "--checkpoint.export=false", "--checkpoint.every=2", "--eval.every=0",
        "--parallel.timeout_s=90", *extra,
    ])


def _enc(m: str, first: str) -> tuple[str, ...]:
    return (f"{m}.encoder.{first}", f"{m}.encoder.layers.0", f"{m}.encoder.layers.1", f"{m}.projector")


def dp_pp_plan(global_batch: int = 8) -> Plan:
    """2 replicas x 2 stages: encoders colocated with LLM layer 0, then layer 1 + head (tied
    embeddings across stages). Microbatches of one sample: some are text-only, and a replica's
    microbatch may lack images while the other replica's has some (FSDP must not hang)."""
    return Plan(
        model="tiny-valm", placement="colocated", dp=2, microbatch_size=1, num_microbatches=global_batch // 2,
        global_batch=global_batch, world_size=4,
        stages=(
            StagePlan(0, "colocated", _enc("vision", "patch_embed") + _enc("audio", "conv") + ("llm.embed", "llm.layers.0"),
                      ranks=((0,), (1,))),
            StagePlan(1, "colocated", ("llm.layers.1", "llm.head"), inputs=(0,), ranks=((2,), (3,))),
        ),
    )


def modality_parallel_zb_plan() -> Plan:
    """The planner's kinds of stages on 4 ranks, dp 1, zero-bubble: vision and audio encoder
    stages, then the LLM in two stages (tied embeddings across them). Every trainable stage is
    under FSDP over a one-rank mesh, and both LLM stages split W from B (the simulator's zb lists)."""
    return Plan(
        model="tiny-valm", placement="modality_parallel", dp=1, microbatch_size=1, num_microbatches=4,
        global_batch=4, world_size=4, schedule="zb", split_w=True,
        stages=(
            StagePlan(0, "vision", _enc("vision", "patch_embed"), ranks=((0,),)),
            StagePlan(1, "audio", _enc("audio", "conv"), ranks=((1,),)),
            StagePlan(2, "llm", ("llm.embed", "llm.layers.0"), inputs=(0, 1), ranks=((2,),)),
            StagePlan(3, "llm", ("llm.layers.1", "llm.head"), inputs=(2,), ranks=((3,),)),
        ),
    )


def write_test_plan(path: Path, plan: Plan, cluster: ClusterSpec | None = None) -> Path:
    return write_plan(path, plan, load_model("tiny-valm", None, None), cluster or ClusterSpec.of(plan.world_size, "CPU", 4))


def llm_tp_plan() -> Plan:
    """Vision and audio on ranks 2 and 3, the LLM on ranks 0-1 with TP 2 (tests/parallel/plan_workers.py)."""
    from plan_workers import modality_parallel_plan

    return modality_parallel_plan()


def encoder_stages_llm_cp_plan() -> Plan:
    """Vision on rank 2, audio on rank 3, the whole LLM on ranks 0-1 with CP 2: each encoder stage
    sends its features to both CP ranks and sums the gradients they send back."""
    return Plan(
        model="tiny-valm", placement="modality_parallel", dp=1, microbatch_size=1, num_microbatches=4,
        global_batch=4, world_size=4,
        stages=(
            StagePlan(0, "vision", _enc("vision", "patch_embed"), ranks=((2,),)),
            StagePlan(1, "audio", _enc("audio", "conv"), ranks=((3,),)),
            StagePlan(2, "llm", ("llm.embed", "llm.layers.0", "llm.layers.1", "llm.head"), cp=2, inputs=(0, 1),
                      ranks=((0, 1),)),
        ),
    )


def llm_pp_cp_plan() -> Plan:
    """2 LLM stages x CP 2 (encoders colocated with the first): CP rank c of stage 0 feeds CP rank c
    of stage 1; the tied embedding is summed per CP index between the first and last stage."""
    return Plan(
        model="tiny-valm", placement="colocated", dp=1, microbatch_size=2, num_microbatches=2,
        global_batch=4, world_size=4,
        stages=(
            StagePlan(0, "colocated", _enc("vision", "patch_embed") + _enc("audio", "conv") + ("llm.embed", "llm.layers.0"),
                      cp=2, ranks=((0, 1),)),
            StagePlan(1, "colocated", ("llm.layers.1", "llm.head"), cp=2, inputs=(0,), ranks=((2, 3),)),
        ),
    )


def dp_cp_plan() -> Plan:
    """2 replicas x CP 2 of one stage (encoders colocated): FSDP reduces over replicas x CP ranks,
    the loss is summed over both, the token and sample counts once per replica."""
    return Plan(
        model="tiny-valm", placement="colocated", dp=2, microbatch_size=1, num_microbatches=2,
        global_batch=4, world_size=4,
        stages=(StagePlan(0, "colocated", _enc("vision", "patch_embed") + _enc("audio", "conv")
                          + ("llm.embed", "llm.layers.0", "llm.layers.1", "llm.head"), cp=2, ranks=((0, 1), (2, 3))),),
    )


def llm_tp_cp_plan() -> Plan:
    """One stage of TP 2 x CP 2 (encoders colocated): each TP rank exchanges its heads' K/V over
    its CP group; FSDP shards over the CP ranks, TP over the TP ranks."""
    stage = dp_cp_plan().stages[0]
    return replace(dp_cp_plan(), dp=1, num_microbatches=4, stages=(replace(stage, tp=2, ranks=((0, 1, 2, 3),)),))


def train_worker(rank: int, world_size: int, jobs: list[tuple[str, str, tuple[str, ...], int | None]]) -> list[dict]:
    """Rank ``rank`` of ``amylum train`` under an existing gloo group (dist_harness.run_world), for
    each job ``(run_dir, plan, config overrides, stop_after)``: train (up to ``stop_after``, where a
    checkpoint is saved), then, if it stopped early, run again, resuming from that checkpoint."""
    from amylum.runtime.distributed import train_distributed

    out = []
    for run_dir, plan, overrides, stop_after in jobs:
        def config():
            return small_config(Path(run_dir), f"--parallel.plan={plan}", *overrides)

        first = train_distributed(config(), stop_after=stop_after, log=lambda _: None)
        resumed = train_distributed(config(), log=lambda _: None) if stop_after else {"losses": {}, "steps": first["steps"]}
        out.append({"first": first["losses"], "resumed": resumed["losses"], "steps": resumed["steps"]})
    return out


def zero_bubble_train_worker(rank: int, world_size: int, jobs: list) -> list[dict]:
    """``train_worker``, counting per job what the zero-bubble split did on this rank: W actions
    that ran apart from their B from B's join nodes (``split_w``) and FSDP reductions held until
    a step's last W (``held_reductions``, one per step on a splitting FSDP stage)."""
    from amylum.parallel.pipeline import executor

    counts = {"split_w": 0, "held_reductions": 0}
    backward_weight, reduce_held = executor.backward_weight, executor.reduce_held

    def counting_backward_weight(deferred, weights):
        counts["split_w"] += bool(deferred.param_groups)
        backward_weight(deferred, weights)

    def counting_reduce_held(roots):
        counts["held_reductions"] += 1
        reduce_held(roots)

    executor.backward_weight, executor.reduce_held = counting_backward_weight, counting_reduce_held
    out = []
    for job in jobs:
        counts.update(split_w=0, held_reductions=0)
        (result,) = train_worker(rank, world_size, [job])
        out.append({**result, **counts})
    return out

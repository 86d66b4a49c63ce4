"""Configs, plan files and rank workers for the distributed-training tests (test_dist_train.py)."""

from __future__ import annotations

from pathlib import Path

from amylum.config import Config, load_config
from amylum.planner.commands import load_model
from amylum.planner.plan import Plan, StagePlan
from amylum.planner.planfile import write_plan
from amylum.planner.spec import ClusterSpec


def small_config(run_dir: Path, *extra: str) -> Config:
    """tiny-valm on a small demo set: every test run is a few seconds of training."""
    return load_config(None, [
        f"--job.run_dir={run_dir}", "--model.preset=tiny-valm", "--data.n_train=48", "--data.n_eval=0",
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


def write_test_plan(path: Path, plan: Plan, cluster: ClusterSpec | None = None) -> Path:
    return write_plan(path, plan, load_model("tiny-valm", None, None), cluster or ClusterSpec.of(plan.world_size, "CPU", 4))


def llm_tp_plan() -> Plan:
    """Vision and audio on ranks 2 and 3, the LLM on ranks 0-1 with TP 2 (tests/parallel/plan_workers.py)."""
    from plan_workers import modality_parallel_plan

    return modality_parallel_plan()


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

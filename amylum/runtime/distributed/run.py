"""``torchrun --nproc-per-node N -m amylum train CONFIG [--plan PLAN]``: one run over N processes.

The run directory is the one of ``amylum train`` (config.toml, metrics.jsonl, checkpoints/,
summary.json, report) plus ``plan.json``, the plan that ran. Rank 0 writes the shared files;
every rank writes its shards of each checkpoint. Order of events:

1. the plan (file or planner) is checked against the model, batch, memory and world size:
   a plan that cannot run stops here, before any process group exists;
2. the process group starts (gloo on CPU, NCCL on GPUs) with ``parallel.timeout_s``;
3. rank 0 prepares the data, then every rank builds the model from the seed, keeps its stage,
   shards it and trains; a checkpoint in the run directory is resumed;
4. after the last step the group is torn down and rank 0 exports the final checkpoint (one
   process, full model names) and writes the report.
"""

from __future__ import annotations

import json
import time
import warnings
from pathlib import Path
from typing import Any, Callable

import torch
import torch.distributed as dist

from amylum.config import Config, to_toml
from amylum.runtime.distributed.launch import LaunchEnv, init_process_group, rank_device
from amylum.runtime.distributed.planning import CheckedPlan, resolve_plan


def _quiet(_: str) -> None:
    pass


def train_distributed(cfg: Config, *, stop_after: int | None = None, log: Callable[[str], None] = print,
                      env: LaunchEnv | None = None) -> dict[str, Any]:
    """Run (or resume) ``cfg`` as one rank of a torchrun job; returns the summary (rank 0 writes it)."""
    from amylum.runtime.build import check_config, check_flex_is_compiled

    started = time.perf_counter()
    check_config(cfg)
    env = env or LaunchEnv.from_environ()
    device = rank_device(cfg.job.device, env.local_rank)
    check_flex_is_compiled(cfg, device, compiled=False)  # stages and shards are not compiled here
    checked = resolve_plan(cfg, env.world_size, env.local_world_size, device.type)  # LayoutError: no group yet
    # FSDP warns when a stage returns a view (encoder outputs are reshapes): harmful only if the
    # caller modified it in place, and the executor never does (it sends a copy or backprops it).
    warnings.filterwarnings("ignore", message=r"FSDP2-wrapped module .* returned a view tensor")
    owns_group = not dist.is_initialized()
    init_process_group(env, device, cfg.parallel.timeout_s)
    say = log if env.rank == 0 else _quiet
    try:
        summary = _train(cfg, env, device, checked, stop_after, say, started)
    finally:
        if owns_group and dist.is_initialized():
            dist.destroy_process_group()
    if env.rank == 0 and summary["completed"]:
        _finish(cfg, summary, exported=owns_group, log=say)
    return summary


def _prepare_run_dir(cfg: Config, checked: CheckedPlan) -> None:
    from amylum.planner.planfile import write_plan
    from amylum.runtime.build import prepare_data

    run_dir = Path(cfg.job.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.toml").write_text(to_toml(cfg))
    write_plan(run_dir / "plan.json", checked.plan, checked.model_spec, checked.cluster)
    prepare_data(cfg)  # generates the demo once; the other ranks wait at a barrier, then read it


def _train(cfg: Config, env: LaunchEnv, device: torch.device, checked: CheckedPlan, stop_after, log, started) -> dict:
    from amylum.data.dataset import MultimodalDataset
    from amylum.data.processor import MultimodalProcessor
    from amylum.data.tokenizer import load_tokenizer
    from amylum.runtime.build import build_model, prepare_data
    from amylum.runtime.distributed.assembly import assemble_rank
    from amylum.runtime.distributed.cp_shards import CPSettings
    from amylum.runtime.distributed.data import replica_loader
    from amylum.runtime.distributed.trainer import DistributedTrainer
    from amylum.runtime.provenance import code_commit, hardware
    from amylum.runtime.trainer import seed_everything

    plan, layout = checked.plan, checked.layout
    if env.rank == 0:
        _prepare_run_dir(cfg, checked)
    dist.barrier()
    seed_everything(cfg.job.seed, cfg.training.deterministic)
    if cfg.job.threads and device.type == "cpu":
        torch.set_num_threads(cfg.job.threads)
    paths = prepare_data(cfg)
    tokenizer = load_tokenizer(paths.tokenizer)
    model = build_model(cfg, vocab_size=len(tokenizer), device=device)  # same seed: same weights on every rank
    counts = model.parameter_counts()
    modalities = list(model.encoders)
    processor = MultimodalProcessor(tokenizer, model.modality_specs(), max_length=cfg.data.max_length,
                                    on_error=cfg.data.on_error)
    # Every rank of a replica reads the same samples: the loader is indexed by the replica. It is
    # built from the whole model (balanced mode estimates work from every module), before the cut.
    loader = replica_loader(cfg, MultimodalDataset(paths.train, processor), model, checked,
                            replica=layout.role(env.rank).replica)
    stage = assemble_rank(model, layout, env.rank, plan.num_microbatches, checked.schedule, device,
                          cp=CPSettings.from_config(cfg), planned=checked)
    cp = max(layout.cp(s) for s in layout.stage_ranks)
    log(f"amylum: {cfg.model.preset} on {env.world_size} processes ({device.type}), plan {checked.source}: "
        f"{plan.placement}, {len(layout.stage_ranks)} stages, dp {plan.dp}, {plan.num_microbatches} microbatches "
        f"per replica, {checked.schedule}, data.balance {cfg.data.balance}"
        + (f", LLM cp {cp} ({cfg.parallel.cp_policy}, {cfg.parallel.cp_exchange} K/V)" if cp > 1 else "")
        + f"; {counts.get('trainable', 0):,} trainable parameters; run directory {cfg.job.run_dir}")
    for note in checked.notes:
        log(f"note: {note}")
    trainer = DistributedTrainer(cfg, stage, loader, device=device, num_microbatches=plan.num_microbatches,
                                 modalities=modalities, loader_yields_microbatches=cfg.data.balance != "none")
    if cfg.checkpoint.resume != "never":
        explicit = None if cfg.checkpoint.resume == "auto" else cfg.checkpoint.resume
        if trainer.resume(explicit):
            log(f"resumed from step {trainer.step}")
    if trainer.step >= cfg.training.steps:
        log(f"already trained {trainer.step} of {cfg.training.steps} steps; nothing to do")
    result = trainer.fit(stop_after=stop_after, log=log)
    summary: dict[str, Any] = {
        "preset": cfg.model.preset, "device": str(device), "world_size": env.world_size,
        "steps": result.final_step, "completed": result.final_step >= cfg.training.steps,
        "train_seconds": round(result.wall_seconds, 2), "parameters": counts, "commit": code_commit(),
        "hardware": hardware(device, trainer.energy.backend), "energy": result.energy,
        "plan": {"source": checked.source, "placement": plan.placement, "dp": plan.dp,
                 "stages": len(layout.stage_ranks), "num_microbatches": plan.num_microbatches,
                 "schedule": checked.schedule, "balance": cfg.data.balance, "cp": cp},
        "losses": {str(k): v for k, v in sorted(result.losses.items())},
    }
    if result.losses:
        summary["final_loss"] = result.losses[max(result.losses)]
    summary["wall_seconds"] = round(time.perf_counter() - started, 2)
    if env.rank == 0:
        (Path(cfg.job.run_dir) / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def _finish(cfg: Config, summary: dict[str, Any], *, exported: bool, log) -> None:
    """Rank 0, after the group is gone: export the final checkpoint on one process and report."""
    run_dir = Path(cfg.job.run_dir)
    if cfg.checkpoint.export and exported:
        from amylum.runtime.run import export_checkpoint

        summary["export"] = str(export_checkpoint(run_dir))
    if cfg.metrics.report:
        from amylum.runtime.report import write_reports

        summary["report"] = str(write_reports(run_dir)["html"])
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    log(f"done: {summary['steps']} steps on {summary['world_size']} processes in {summary['wall_seconds']:.0f} s"
        + (f"; final loss {summary['final_loss']:.4f}" if "final_loss" in summary else ""))

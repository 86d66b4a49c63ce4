"""``amylum train``: one resolved config → a complete run directory.

RUN_DIR/
    config.toml        the resolved config (what ran, including defaults)
    data/              the generated demo data and tokenizer (demo runs only)
    metrics.jsonl      train and eval records, one JSON object per line
    tensorboard/       the same scalars for TensorBoard
    eval/              per-evaluation results (scores, slices, robustness) and predictions
    checkpoints/       step-NNNNNNNN/ full training states (last K)
    export/            HF-loadable model (llm/, encoders/<name>/, amylum.json)
    report.html        the run report (offline page), report.json beside it
    report.md, plots/  a short Markdown summary with PNG plots
    summary.json       final figures (steps, loss, eval scores, energy, hardware, wall time)
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Callable

import torch

from amylum.config import Config, to_toml
from amylum.runtime.build import build_run, check_config
from amylum.runtime.evaluation import headline
from amylum.runtime.provenance import code_commit, hardware
from amylum.runtime.trainer import Trainer, seed_everything


def train(cfg: Config, *, stop_after: int | None = None, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Run (or resume) the job described by ``cfg``; returns the summary also written to summary.json.

    ``stop_after`` ends the run after that step as if it had been killed (tests, debugging).
    """
    started = time.perf_counter()
    check_config(cfg)
    run_dir = Path(cfg.job.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.toml").write_text(to_toml(cfg))
    seed_everything(cfg.job.seed, cfg.training.deterministic)
    parts = build_run(cfg)
    if cfg.job.threads and parts.device.type == "cpu":
        torch.set_num_threads(cfg.job.threads)
    counts = parts.model.parameter_counts() if hasattr(parts.model, "parameter_counts") else {}
    log(f"amylum: {cfg.model.preset} on {parts.device}, {counts.get('trainable', 0):,} trainable of "
        f"{counts.get('total', 0):,} parameters; run directory {run_dir}")
    trainer = Trainer(cfg, parts.model, parts.train_loader, device=parts.device, evaluator=parts.evaluator)
    if cfg.checkpoint.resume != "never":
        explicit = None if cfg.checkpoint.resume == "auto" else cfg.checkpoint.resume
        if trainer.resume(explicit):
            log(f"resumed from step {trainer.step}")
    if trainer.step >= cfg.training.steps:
        log(f"already trained {trainer.step} of {cfg.training.steps} steps; nothing to do "
            "(use another job.run_dir or raise training.steps)")
        previous = run_dir / "summary.json"
        if previous.is_file():
            return json.loads(previous.read_text())
    result = trainer.fit(stop_after=stop_after, log=log)

    summary: dict[str, Any] = {
        "preset": cfg.model.preset, "device": str(parts.device), "steps": result.final_step,
        "completed": result.final_step >= cfg.training.steps, "train_seconds": round(result.wall_seconds, 2),
        "parameters": counts, "commit": code_commit(),
        "hardware": hardware(parts.device, trainer.energy.backend), "energy": result.energy,
    }
    skipped = getattr(getattr(parts.train_loader, "dataset", None), "skipped", None)
    if skipped is not None:
        summary["skipped"] = {**skipped.state(), "examples": skipped.examples[:10]}
    if result.losses:
        summary["final_loss"] = result.losses[max(result.losses)]
    if result.last_eval:
        summary["eval"] = result.last_eval
    if summary["completed"] and cfg.checkpoint.export:
        from amylum.runtime.export import export_model

        export_model(parts.model, run_dir / "export")
        parts.tokenizer.save_pretrained(str(run_dir / "export" / "tokenizer"))
        summary["export"] = str(run_dir / "export")
    summary["wall_seconds"] = round(time.perf_counter() - started, 2)
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    if summary["completed"] and cfg.metrics.report:
        from amylum.runtime.report import write_reports

        summary["report"] = str(write_reports(run_dir)["html"])
    log(_summary_line(summary))
    return summary


def _summary_line(summary: dict[str, Any]) -> str:
    parts = [f"done: {summary['steps']} steps in {summary['wall_seconds']:.0f} s"]
    if "final_loss" in summary:
        parts.append(f"final loss {summary['final_loss']:.4f}")
    top = headline(summary.get("eval", {}))
    if top is not None:
        parts.append(f"{top[0]} {top[1]:.1%}")
    if "report" in summary:
        parts.append(f"report {summary['report']}")
    return "; ".join(parts)


def export_checkpoint(run_dir: Path, checkpoint: str | Path | None = None, out: Path | None = None) -> Path:
    """Export a run's checkpoint (default: its latest) with the model rebuilt from RUN_DIR/config.toml."""
    from amylum.config import load_config
    from amylum.data.tokenizer import load_tokenizer
    from amylum.runtime.build import build_model, prepare_data
    from amylum.runtime.checkpoint import CheckpointError, CheckpointManager
    from amylum.runtime.export import export_model

    cfg = load_config(run_dir / "config.toml")
    if checkpoint is None:
        latest = CheckpointManager(run_dir / "checkpoints").latest()
        if latest is None:
            raise CheckpointError(f"{run_dir / 'checkpoints'} holds no complete checkpoint")
        checkpoint = latest.path
    tokenizer = load_tokenizer(prepare_data(cfg).tokenizer)
    model = build_model(cfg, vocab_size=len(tokenizer), device=torch.device("cpu"))
    CheckpointManager.load(checkpoint, model)
    out = out or run_dir / "export"
    export_model(model, out)
    tokenizer.save_pretrained(str(out / "tokenizer"))
    return out

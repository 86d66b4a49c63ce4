"""Single-device training loop: AdamW, warm-up + cosine, accumulation, clipping, bf16 on GPU,
continuous evaluation (every ``eval.every`` steps and at the end), metrics with per-step energy,
atomic checkpoints with exact resume.

The trainer knows a model only as ``model(batch) -> output`` with ``output.loss`` (mean over the
batch's target tokens) and ``output.num_target_tokens``, and a loader only as an iterable of
``MultimodalBatch`` with ``state_dict()`` / ``load_state_dict()``. Everything a step depends on
(parameters, optimizer, schedule, data position, RNG) is in the checkpoint, so on CPU a run that
is killed and resumed logs exactly the losses of an uninterrupted one.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn
from tqdm import tqdm

from amylum.config import Config
from amylum.data.batch import IGNORE_INDEX, MultimodalBatch
from amylum.runtime.checkpoint import CheckpointManager
from amylum.runtime.energy import EnergyMeter, EnergyTally
from amylum.runtime.flops import StepFlops, measure_step_flops, peak_tflops
from amylum.runtime.metrics import MetricsWriter, peak_memory_gib
from amylum.runtime.optim import build_optimizer, build_scheduler
from amylum.runtime.state import rng_state, set_rng_state


class StatefulLoader(Protocol):
    def __iter__(self) -> Iterator[MultimodalBatch]: ...
    def state_dict(self) -> dict[str, Any]: ...
    def load_state_dict(self, state: dict[str, Any]) -> None: ...


class StepEvaluator(Protocol):
    """What the trainer calls (``amylum.evaluation.Evaluator``): results with ``flat() -> {key: value}``."""

    def evaluate(self, model: nn.Module, step: int | None = None, *, final: bool = False) -> Any: ...


@dataclass
class TrainResult:
    start_step: int
    final_step: int
    losses: dict[int, float] = field(default_factory=dict)  # step → loss of that step
    last_eval: dict[str, float] = field(default_factory=dict)
    wall_seconds: float = 0.0
    energy: dict[str, Any] = field(default_factory=dict)  # run total, or {"available": False, "why": ...}


def seed_everything(seed: int, deterministic: bool) -> None:
    import random

    import numpy as np

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    # warn_only: some CUDA kernels have no deterministic variant; CPU training is exact either way.
    torch.use_deterministic_algorithms(deterministic, warn_only=True)


def _item_label(modality: str, model: nn.Module) -> str:
    specs = model.modality_specs() if hasattr(model, "modality_specs") else {}
    kind = getattr(specs.get(modality), "kind", modality)
    return "images_per_s" if kind == "image" else f"{kind}_items_per_s"


class Trainer:
    def __init__(
        self,
        cfg: Config,
        model: nn.Module,
        train_loader: StatefulLoader,
        *,
        device: torch.device,
        evaluator: StepEvaluator | None = None,
        energy_meter: EnergyMeter | None = None,
    ) -> None:
        self.cfg = cfg
        self.model = model
        self.loader = train_loader
        self.device = device
        self.evaluator = evaluator
        self.run_dir = Path(cfg.job.run_dir)
        self.optimizer = build_optimizer(model, cfg.training, device)
        self.scheduler = build_scheduler(self.optimizer, cfg.training)
        self.checkpoints = CheckpointManager(self.run_dir / "checkpoints", keep_last=cfg.checkpoint.keep_last)
        use_bf16 = cfg.training.precision == "bf16" or (cfg.training.precision == "auto" and device.type == "cuda")
        self._autocast = (
            (lambda: torch.autocast(device.type, dtype=torch.bfloat16)) if use_bf16 else contextlib.nullcontext
        )
        self.step = 0
        self._data: Iterator[MultimodalBatch] | None = None
        self._flops: StepFlops | None = None
        self._peak = peak_tflops(device, cfg.metrics.peak_tflops)
        # Meter the GPU this process drives; without one the meter says "not available" (never 0 J).
        self.energy = energy_meter or EnergyMeter(
            gpu_indices=[device.index if device.index is not None else torch.cuda.current_device()]
            if device.type == "cuda" else None)

    # ----------------------------------------------------------------- state

    def _extra_state(self) -> dict[str, Any]:
        return {"scheduler": self.scheduler.state_dict(), "loader": self.loader.state_dict(), "rng": rng_state()}

    def save_checkpoint(self) -> Path:
        return self.checkpoints.save(self.step, self.model, self.optimizer, self._extra_state())

    def resume(self, path: str | Path | None = None) -> bool:
        """Restore from ``path`` (or the latest valid checkpoint in the run directory); False if none."""
        if path is None:
            latest = self.checkpoints.latest()
            if latest is None:
                return False
            path = latest.path
        extra = CheckpointManager.load(path, self.model, self.optimizer)
        self.scheduler.load_state_dict(extra["scheduler"])
        self.loader.load_state_dict(extra["loader"])
        set_rng_state(extra["rng"])
        self.step = int(extra["step"])
        self._data = None  # a fresh iterator starts at the restored position
        return True

    # ----------------------------------------------------------------- data

    def _next_batch(self) -> MultimodalBatch:
        """Next batch, rolling over epochs (the loader's state moves to the next epoch itself)."""
        for _ in range(2):
            if self._data is None:
                self._data = iter(self.loader)
            try:
                return next(self._data)
            except StopIteration:
                self._data = None
        raise RuntimeError("the training loader yielded no batch in a whole epoch (empty dataset?)")

    # ----------------------------------------------------------------- step

    def train_step(self) -> dict[str, Any]:
        """One optimizer step over ``grad_accum`` micro-batches; returns what it processed."""
        t = self.cfg.training
        self.model.train()
        micro = [self._next_batch() for _ in range(t.grad_accum)]
        # Weight each micro-batch's mean loss by its share of the step's target tokens, so the
        # step's gradient is that of the mean over all its tokens, whatever the micro-batch split.
        targets = [int((b.labels[:, 1:] != IGNORE_INDEX).sum()) for b in micro]
        total_targets = max(1, sum(targets))
        loss_sum = torch.zeros((), device=self.device)
        for batch, n in zip(micro, targets):
            batch = batch.to(self.device, non_blocking=True)
            if self._flops is None:
                self._flops = measure_step_flops(self.model, batch)
            with self._autocast():
                out = self.model(batch)
            loss = out.loss.float() * (n / total_targets)
            loss.backward()
            loss_sum += loss.detach()
        max_norm = t.grad_clip if t.grad_clip > 0 else math.inf
        grad_norm = torch.nn.utils.clip_grad_norm_(
            [p for p in self.model.parameters() if p.requires_grad], max_norm
        )
        lr = self.scheduler.get_last_lr()[0]
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        items: dict[str, int] = {}
        stats: dict[str, float] = {}
        for b in micro:
            for m in b.modalities:
                items[m] = items.get(m, 0) + b.num_items(m)
            for k, v in b.stats.items():
                stats[k] = stats.get(k, 0.0) + float(v)
        return {
            "loss": loss_sum, "grad_norm": grad_norm, "lr": lr,
            "tokens": sum(b.num_tokens for b in micro), "samples": sum(b.num_samples for b in micro),
            "items": items, "stats": stats,
        }

    # ----------------------------------------------------------------- evaluation

    def evaluate(self, final: bool = False) -> dict[str, float]:
        """Flat eval metrics at the current step (``<task>/<metric>[/<slice>=<bucket>]``); {} without evaluator."""
        if self.evaluator is None:
            return {}
        self.model.eval()
        try:
            # Evaluation must not move the training RNG: a resumed run evaluates at other moments.
            with torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []), torch.no_grad(), self._autocast():
                results = self.evaluator.evaluate(self.model, self.step, final=final)
        finally:
            self.model.train()
        scores = dict(results.flat())
        if getattr(results, "truncated", False):
            scores["truncated"] = 1.0  # hit eval.max_seconds: some items were not scored
        return scores

    # ----------------------------------------------------------------- loop

    def fit(self, stop_after: int | None = None, log: Callable[[str], None] = print) -> TrainResult:
        """Train to ``training.steps`` (or stop early after step ``stop_after``, as if killed there)."""
        cfg = self.cfg
        total = cfg.training.steps
        end = total if stop_after is None else min(total, stop_after)
        result = TrainResult(start_step=self.step, final_step=self.step)
        writer = self._metrics_writer()
        bar = tqdm(total=total, initial=self.step, disable=not cfg.metrics.progress_bar, desc="train",
                   dynamic_ncols=True, leave=True)
        started = time.perf_counter()
        window = self._new_window()
        energy = EnergyTally()
        try:
            while self.step < end:
                self.energy.begin_step()
                info = self.train_step()
                # Energy is summed over ranks, so each rank credits only the tokens it owns.
                energy.add(self.energy.end_step(tokens=info.get("energy_tokens", info["tokens"])))
                self._accumulate(window, info)
                result.losses[self.step] = float(info["loss"])
                bar.update(1)
                if self.step % cfg.metrics.log_every == 0 or self.step == end:
                    metrics = self._window_metrics(window)
                    metrics.update(energy.flush())
                    writer.log(self.step, "train", metrics)
                    bar.set_postfix(loss=f"{metrics['loss']:.3f}", lr=f"{metrics['lr']:.1e}")
                    if not cfg.metrics.progress_bar:
                        log(f"step {self.step}/{total} loss {metrics['loss']:.4f} lr {metrics['lr']:.2e} "
                            f"tok/s {metrics['tokens_per_s']:.0f}")
                    window = self._new_window()
                is_last = self.step == total
                if (cfg.eval.every and self.step % cfg.eval.every == 0) or is_last:
                    paused = time.perf_counter()
                    scores = self.evaluate(final=is_last)
                    if scores:
                        result.last_eval = scores
                        writer.log(self.step, "eval", scores)
                        overall = {k: v for k, v in scores.items() if k.count("/") == 1 and not k.endswith("/n")}
                        bar.write(f"step {self.step}: eval " + " ".join(f"{k} {v:.4f}" for k, v in overall.items()))
                    window["paused"] += time.perf_counter() - paused
                if (cfg.checkpoint.every and self.step % cfg.checkpoint.every == 0) or is_last:
                    paused = time.perf_counter()
                    self.save_checkpoint()
                    window["paused"] += time.perf_counter() - paused
        finally:
            bar.close()
            writer.close()
        result.final_step = self.step
        result.wall_seconds = time.perf_counter() - started
        result.energy = energy.run_summary(self.energy.backend)
        return result

    def _metrics_writer(self) -> Any:
        """Where ``fit`` logs (``log(step, kind, values)`` and ``close()``); the distributed trainer
        gives all ranks but one a writer that drops records."""
        return MetricsWriter(self.run_dir, tensorboard=self.cfg.metrics.tensorboard, start_step=self.step)

    @staticmethod
    def _new_window() -> dict[str, Any]:
        return {"start": time.perf_counter(), "paused": 0.0, "steps": 0, "loss": 0.0, "grad_norm": 0.0,
                "lr": 0.0, "tokens": 0, "samples": 0, "items": {}, "stats": {}, "flops_llm": 0.0, "flops_enc": 0.0}

    def _accumulate(self, w: dict[str, Any], info: dict[str, Any]) -> None:
        w["steps"] += 1
        w["loss"] += float(info["loss"])  # one host sync per step: cheap next to a step, needed for the curve
        w["grad_norm"] += float(info["grad_norm"])
        w["lr"] = info["lr"]
        w["tokens"] += info["tokens"]
        w["samples"] += info["samples"]
        for k, v in info["items"].items():
            w["items"][k] = w["items"].get(k, 0) + v
        for k, v in info["stats"].items():
            w["stats"][k] = w["stats"].get(k, 0.0) + v
        if self._flops is not None:
            llm, enc = self._flops.step(info["tokens"], info["items"])
            w["flops_llm"] += llm
            w["flops_enc"] += enc

    def _window_metrics(self, w: dict[str, Any]) -> dict[str, float]:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        seconds = max(1e-9, time.perf_counter() - w["start"] - w["paused"])
        n = w["steps"]
        m: dict[str, float] = {
            "loss": w["loss"] / n, "grad_norm": w["grad_norm"] / n, "lr": w["lr"],
            "step_time_s": seconds / n,
            "tokens_per_s": w["tokens"] / seconds, "samples_per_s": w["samples"] / seconds,
        }
        for k, v in w["items"].items():
            m[_item_label(k, self.model)] = v / seconds
        for k, v in w["stats"].items():
            # Batch stats also count samples, tokens and items, which are reported above already.
            if k not in ("samples", "tokens") and not k.endswith("_items"):
                m[f"{k}_per_s"] = v / seconds
        m["llm_tflops"] = w["flops_llm"] / seconds / 1e12
        m["encoder_tflops"] = w["flops_enc"] / seconds / 1e12
        if self._peak:
            m["mfu_pct"] = 100 * (m["llm_tflops"] + m["encoder_tflops"]) / self._peak
        m.update(peak_memory_gib(self.device))
        return m

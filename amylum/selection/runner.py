"""The short-training primitive: train a pair on a fraction r of the alignment data, evaluate it.

Each pair has its own run directory (``OUT/candidates/<pair>``) and is trained by amylum's own
``Trainer``. Training to a larger fraction resumes from the pair's latest checkpoint, so a
successive-halving rung or a scaling point costs only the steps it adds. The learning rate is
warm-up then constant (``min_lr_ratio = 1``): a run that stops at r and resumes to 2r then
follows exactly the schedule of a run that went to 2r at once, which a cosine tied to the
final step would not.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from amylum.config import Config
from amylum.selection.settings import SelectionSettings
from amylum.selection.zoo import Pair


class BudgetExhausted(RuntimeError):
    """Training the next candidate would exceed the search budget."""


@dataclass
class Observation:
    pair: str
    fraction: float
    steps: int
    score: float  # the task metric as reported (accuracy: higher is better; loss: lower)
    error: float  # what is minimised and fitted: 1 − accuracy (floored) or the loss
    resumed_from: int  # the step the checkpoint restored (0 = trained from scratch)
    train_seconds: float
    stage: str = ""

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class Budget:
    steps: int = 0  # 0 = unlimited
    gpu_hours: float = 0.0
    spent_steps: int = 0
    spent_seconds: float = 0.0

    def check(self, steps: int, seconds_per_step: float | None) -> None:
        """Raise before a training call that the budget cannot pay for."""
        if self.steps and self.spent_steps + steps > self.steps:
            raise BudgetExhausted(f"{steps} more steps would exceed the budget of {self.steps} "
                                  f"({self.spent_steps} spent)")
        if self.gpu_hours and seconds_per_step is not None:
            if (self.spent_seconds + steps * seconds_per_step) / 3600 > self.gpu_hours:
                raise BudgetExhausted(f"~{steps * seconds_per_step:.0f} s more would exceed {self.gpu_hours} GPU-hours "
                                      f"({self.spent_seconds / 3600:.3f} spent)")

    def charge(self, steps: int, seconds: float) -> None:
        self.spent_steps += steps
        self.spent_seconds += seconds


@dataclass
class DataPaths:
    train: Path
    eval: Path
    tokenizer: Path


def prepare_data(s: SelectionSettings) -> DataPaths:
    """Alignment and task data: the generated digits demo, or the configured files."""
    if s.data.demo == "none":
        return DataPaths(Path(s.data.path), Path(s.data.eval_path), Path(s.data.tokenizer))
    from amylum.data.demo import make_demo_dataset

    root = Path(s.job.out_dir) / "data"
    if not (root / "tokenizer").is_dir() or not (root / "eval.jsonl").is_file():
        make_demo_dataset(root, kind="vlm", n_train=s.data.n_train, n_eval=s.data.n_eval, seed=s.job.seed)
    return DataPaths(root / "train.jsonl", root / "eval.jsonl", root / "tokenizer")


def count_records(path: Path) -> int:
    from amylum.data.records import load_records

    return len(load_records(path, "skip"))


class PairRunner:
    """Trains pairs to data fractions (resuming), evaluates them on the task, charges a budget."""

    def __init__(self, s: SelectionSettings, data: DataPaths, budget: Budget, log: Callable[[str], None] = print):
        self.s = s
        self.data = data
        self.budget = budget
        self.log = log
        self.device = torch.device(s.job.device)
        t = s.training
        self.full_steps = t.full_steps or max(1, math.ceil(t.epochs * count_records(data.train) / t.batch_size))
        self.steps_trained: dict[str, int] = {}  # pair → steps its latest checkpoint holds
        self.seconds_per_step: dict[str, float] = {}
        self._tokenizers: dict[str, Any] = {}

    # ------------------------------------------------------------------ pieces
    def steps_for(self, fraction: float) -> int:
        return max(1, round(fraction * self.full_steps))

    def tokenizer(self, pair: Pair):
        from amylum.data.tokenizer import load_tokenizer

        path = pair.llm.tokenizer or str(self.data.tokenizer)
        if path not in self._tokenizers:
            self._tokenizers[path] = load_tokenizer(path)
        return self._tokenizers[path]

    def config(self, run_dir: Path, steps: int, *, lr: float | None = None) -> Config:
        cfg = Config()
        cfg.job.run_dir, cfg.job.seed, cfg.job.device, cfg.job.threads = str(run_dir), self.s.job.seed, self.s.job.device, self.s.job.threads
        t = self.s.training
        cfg.training.steps, cfg.training.batch_size, cfg.training.lr = steps, t.batch_size, lr or t.lr
        cfg.training.warmup_steps, cfg.training.min_lr_ratio = t.warmup_steps, 1.0  # constant after warm-up: see module doc
        cfg.training.weight_decay, cfg.training.grad_clip = t.weight_decay, t.grad_clip
        cfg.training.precision = "auto"
        cfg.data.max_length = self.s.data.max_length
        cfg.eval.every, cfg.eval.max_samples, cfg.eval.batch_size = 0, self.s.data.eval_samples, self.s.data.eval_batch_size
        cfg.checkpoint.every, cfg.checkpoint.keep_last, cfg.checkpoint.export = 0, 1, False
        cfg.metrics.tensorboard, cfg.metrics.progress_bar, cfg.metrics.report = False, False, False
        cfg.metrics.log_every = max(1, steps)
        return cfg

    def build(self, pair: Pair, *, llm: str | None = None, encoders: str | None = None) -> nn.Module:
        from amylum.models import BranchFreeze, FreezeSpec, apply_freeze

        model = pair.build(len(self.tokenizer(pair)), projector=self.s.training.projector,
                           attention_backend=self.s.training.attention)
        branch = BranchFreeze(encoder=encoders or self.s.training.encoders, projector="trainable")
        apply_freeze(model, FreezeSpec(llm=llm or self.s.training.llm, encoders={"vision": branch}))
        if branch.encoder == "trainable":
            _freeze_unused(model.encoders["vision"])
        return model.to(self.device)

    def loader(self, pair: Pair, model: nn.Module, records: Path | None = None):
        from amylum.data.dataset import MultimodalDataset, ResumableLoader
        from amylum.data.processor import MultimodalProcessor

        processor = MultimodalProcessor(self.tokenizer(pair), model.modality_specs(), max_length=self.s.data.max_length)
        return ResumableLoader(MultimodalDataset(records or self.data.train, processor), batch_size=self.s.training.batch_size,
                               seed=self.s.job.seed, max_length=self.s.data.max_length)

    def evaluator(self, pair: Pair, model: nn.Module):
        from amylum.selection.task_eval import make_task_evaluator

        d = self.s.data
        return make_task_evaluator(d.metric if d.metric == "loss" else "accuracy", self.data.eval, self.tokenizer(pair),
                                   model.modality_specs(), max_length=d.max_length, max_samples=d.eval_samples,
                                   batch_size=d.eval_batch_size, device=self.device)

    def error_of(self, scores: dict[str, float]) -> tuple[float, float]:
        metric = self.s.data.metric
        if metric not in scores:
            raise ValueError(f"the task evaluation reported {sorted(scores)}, not the metric {metric!r}")
        score = float(scores[metric])
        if metric == "loss":
            return score, max(score, 1e-6)
        # log(error) is fitted: a perfect score is floored at half of one sample's worth of error.
        n = self.s.data.eval_samples or count_records(self.data.eval)
        return score, max(1.0 - score, 0.5 / max(1, n))

    # ------------------------------------------------------------------ the primitive
    def train_to(self, pair: Pair, fraction: float, stage: str = "") -> Observation:
        """Train ``pair`` to ``fraction`` of the full data (resuming its checkpoint) and evaluate it."""
        from amylum.runtime.trainer import Trainer

        steps = self.steps_for(fraction)
        have = self.steps_trained.get(pair.name, 0)
        if steps > have:
            self.budget.check(steps - have, self._sec_per_step_estimate(pair))
        if self.device.type == "cpu" and self.s.job.threads:
            torch.set_num_threads(self.s.job.threads)
        run_dir = Path(self.s.job.out_dir) / "candidates" / pair.name
        cfg = self.config(run_dir, max(steps, have))
        model = self.build(pair)
        # The task is evaluated here, not by the trainer: also when the checkpoint already held the fraction.
        trainer = Trainer(cfg, model, self.loader(pair, model), device=self.device, evaluator=None)
        trainer.resume()  # latest checkpoint of this pair, if any (a re-run of the search resumes too)
        start = trainer.step
        if start > steps:
            raise RuntimeError(f"{pair.name}: its checkpoint is at step {start}, past the requested {steps}")
        t0 = time.perf_counter()
        if start < steps:
            trainer.fit(log=lambda _: None)
        seconds = time.perf_counter() - t0
        scores = self.evaluator(pair, model)(model)
        if start < steps:
            self.budget.charge(steps - start, seconds)
            self.seconds_per_step[pair.name] = seconds / (steps - start)
        self.steps_trained[pair.name] = steps
        score, error = self.error_of(scores)
        return Observation(pair.name, fraction, steps, score, error, start, round(seconds, 3), stage)

    def warm_up(self, pair: Pair, steps: int) -> nn.Module:
        """(encoder, LLM) with only the projector training for ``steps`` steps (LLM clustering); the model."""
        from amylum.runtime.trainer import Trainer

        model = self.build(pair, llm="frozen", encoders="frozen")
        if steps <= 0:
            return model
        self.budget.check(steps, None)
        cfg = self.config(Path(self.s.job.out_dir) / "warmup" / pair.name, steps)
        trainer = Trainer(cfg, model, self.loader(pair, model), device=self.device, evaluator=None)
        trainer.resume()
        start, t0 = trainer.step, time.perf_counter()
        if start < steps:
            trainer.fit(log=lambda _: None)
            self.budget.charge(steps - start, time.perf_counter() - t0)
        return model

    def _sec_per_step_estimate(self, pair: Pair) -> float | None:
        if pair.name in self.seconds_per_step:
            return self.seconds_per_step[pair.name]
        known = list(self.seconds_per_step.values())
        return sum(known) / len(known) if known else None


def _freeze_unused(branch: nn.Module) -> None:
    """Freeze encoder parameters the features never depend on (pooling heads, layers past feature_layer).

    They would get no gradient, so AdamW keeps no state for them, and a checkpoint could not
    restore the optimizer for a model that still calls them trainable.
    """
    params = [p for p in branch.encoder.parameters() if p.requires_grad]
    if not params:
        return
    with torch.random.fork_rng(devices=[]):
        feats = branch.encode(**branch.dummy_inputs(torch.device("cpu")))
    grads = torch.autograd.grad(feats.sum(), params, allow_unused=True)
    for p, g in zip(params, grads):
        if g is None:
            p.requires_grad_(False)


"""Continuous evaluation: the hook the trainer calls every N steps and at the end.

    evaluator = Evaluator(suite, tokenizer, max_length=cfg.data.max_length, out_dir=run_dir / "eval")
    results = evaluator.evaluate(model, step, final=is_last)
    writer.log(step, "eval", results.flat())

Each call writes ``out_dir/step-NNNNNNNN.json`` (scores, slices, robustness, scorer versions,
skipped records) and ``out_dir/predictions/step-NNNNNNNN.jsonl`` (every output with its
inputs and references: the source of human-review exports and of the report's failure list).
The model is put in eval mode and back; the RNG is not touched unless sampling asks for it
(with its own seeded generator), so evaluating never changes what training does next.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from amylum.data.chat import ChatTemplate
from amylum.data.processor import MultimodalProcessor
from amylum.evaluation.config import SuiteConfig, TaskConfig
from amylum.evaluation.distributed import default_comm
from amylum.evaluation.metrics import build_metric
from amylum.evaluation.results import EvalResults, robustness_entry, score_predictions
from amylum.evaluation.robustness import perturb_record
from amylum.evaluation.tasks import Prediction, PredictOutcome, TaskData, predict

logger = logging.getLogger("amylum.evaluation")


def step_name(step: int | None) -> str:
    return "step-unknown" if step is None else f"step-{step:08d}"


class Evaluator:
    """Runs a suite's tasks on a model.

    Args:
        suite: the tasks, slices, robustness pass and budget (``load_suite`` / ``default_suite``).
        tokenizer: the model's tokenizer (the same one training used).
        max_length: longest prompt in tokens; longer records are skipped and reported, never cut.
        out_dir: where results and predictions are written (None: nothing is written).
        comm: ``LocalComm`` / ``TorchComm``; default: the process group if one is initialised.
        template: the chat template training used.
    """

    def __init__(self, suite: SuiteConfig, tokenizer: Any, *, max_length: int = 256, out_dir: str | Path | None = None,
                 comm: Any = None, template: ChatTemplate | None = None) -> None:
        self.suite = suite
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.out_dir = Path(out_dir) if out_dir is not None else None
        self.comm = comm
        self.template = template
        self.metrics = {t.name: [build_metric(m) for m in t.metrics] for t in suite.tasks}
        self.data = {t.name: TaskData(t, suite.budget) for t in suite.tasks}
        self._perturbed: dict[str, dict[str, list]] = {}  # task → perturbation → records (built once)
        self._work_dir: Path | None = None
        self.history: list[dict[str, Any]] = []  # flat metrics of every evaluation, with its step

    # ------------------------------------------------------------------ robustness inputs

    def _perturbed_records(self, task: TaskConfig) -> dict[str, list]:
        if task.name in self._perturbed:
            return self._perturbed[task.name]
        if self._work_dir is None:
            if self.out_dir is not None:
                self._work_dir = self.out_dir / "perturbed"
            else:  # removed when this evaluator is garbage-collected
                self._tmp = tempfile.TemporaryDirectory(prefix="amylum-eval-")
                self._work_dir = Path(self._tmp.name)
        data = self.data[task.name]
        limit = self.suite.robustness.max_samples
        records = data.records[:limit] if limit else data.records
        out = {}
        for p in self.suite.robustness.perturbations:
            perturbed = []
            for r in records:
                try:
                    q = perturb_record(r, p.type, p.name, p.options, data.media_root, self._work_dir / task.name,
                                       self.suite.robustness.seed)
                except Exception as e:  # a record whose media cannot be perturbed is the clean run's to report
                    logger.warning("task %s: cannot apply %s to record %s: %s", task.name, p.name, r.id, e)
                    continue
                if q is not None:
                    perturbed.append(q)
            out[p.name] = perturbed
        self._perturbed[task.name] = out
        return out

    def _robustness_due(self, step: int | None, final: bool) -> bool:
        r = self.suite.robustness
        if not r.perturbations:
            return False
        return final or bool(r.every and step is not None and step % r.every == 0)

    # ------------------------------------------------------------------ evaluation

    def _processor(self, model) -> MultimodalProcessor:
        return MultimodalProcessor(self.tokenizer, model.modality_specs(), max_length=self.max_length,
                                   mode="generate", on_error="raise", template=self.template)

    @torch.no_grad()
    def evaluate(self, model, step: int | None = None, *, final: bool = False) -> EvalResults:
        started = time.perf_counter()
        budget = self.suite.budget
        deadline = started + budget.max_seconds if budget.max_seconds else None
        comm = self.comm or default_comm(next(model.parameters()).device)
        was_training = model.training
        model.eval()
        results = EvalResults(step=step, final=final)
        all_predictions: list[Prediction] = []
        try:
            processor = self._processor(model)
            for task in self.suite.tasks:
                data, metrics = self.data[task.name], self.metrics[task.name]
                run = predict(model, processor, task, data.records, data.media_root, batch_size=budget.batch_size,
                              deadline=deadline, comm=comm)
                all_predictions += run.predictions
                results.truncated |= run.truncated
                slices = [s for s in self.suite.slices if task.slices is None or s.name in task.slices]
                entry = {
                    "dataset": data.info,
                    "generation": {"max_new_tokens": task.max_new_tokens, "prompt": task.prompt,
                                   "temperature": task.sampling.temperature, "top_p": task.sampling.top_p,
                                   "seed": task.sampling.seed},
                    **score_predictions(metrics, run.predictions, slices),
                    "failures": _failures(run, data),
                    "truncated": run.truncated,
                }
                if self._robustness_due(step, final) and not run.truncated:
                    entry["robustness"] = self._robustness(model, processor, task, run, deadline, comm)
                results.tasks[task.name] = entry
        finally:
            model.train(was_training)
        results.seconds = time.perf_counter() - started
        self.history.append({"step": step, **results.flat()})
        if self.out_dir is not None and comm.rank == 0:
            self._write(results, all_predictions)
        return results

    def __call__(self, model) -> dict[str, float]:
        """The trainer's older ``evaluator(model) -> dict`` hook (no step: prefer ``evaluate``)."""
        return self.evaluate(model).flat()

    def _robustness(self, model, processor, task, clean: PredictOutcome, deadline, comm) -> dict[str, Any]:
        data, metrics = self.data[task.name], self.metrics[task.name]
        out = {}
        for p in self.suite.robustness.perturbations:
            records = self._perturbed_records(task)[p.name]
            desc = {"type": p.type, "options": p.options}
            if not records:
                out[p.name] = {**desc, "n": 0, "metrics": {}, "note": "no record of this task has what it perturbs"}
                continue
            run = predict(model, processor, task, records, data.media_root, batch_size=self.suite.budget.batch_size,
                          deadline=deadline, comm=comm)
            out[p.name] = robustness_entry(metrics, clean.predictions, run.predictions, desc)
            if run.truncated:
                out[p.name]["truncated"] = True
        return out

    def _write(self, results: EvalResults, predictions: list[Prediction]) -> None:
        name = step_name(results.step)
        (self.out_dir / "predictions").mkdir(parents=True, exist_ok=True)
        _atomic_write(self.out_dir / "predictions" / f"{name}.jsonl",
                      "".join(json.dumps(p.to_json()) + "\n" for p in predictions))
        _atomic_write(self.out_dir / f"{name}.json", json.dumps(results.to_json(per_item=True), indent=1) + "\n")


def _failures(run: PredictOutcome, data: TaskData) -> dict[str, Any]:
    """What went wrong beyond wrong answers: skipped records, empty and unterminated outputs."""
    skipped = data.load_skipped + data.template_skipped + run.skipped
    empty = [p.id for p in run.predictions if not p.output.strip()]
    unterminated = [p.id for p in run.predictions if not p.terminated]
    return {
        "skipped": len(skipped) + max(0, data.load_skipped_count - len(data.load_skipped)),
        "skipped_examples": [s.to_json() for s in skipped[:20]],
        "empty_outputs": len(empty), "empty_examples": empty[:20],
        "unterminated": len(unterminated), "unterminated_examples": unterminated[:20],
    }


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)  # a report read mid-write never sees half a file

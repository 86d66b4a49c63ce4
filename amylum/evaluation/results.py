"""Scores of one evaluation, as a JSON tree (what reports read) and as flat metrics (what is logged).

Flat keys (the trainer logs them under kind ``eval``, so TensorBoard shows ``eval/<key>``)::

    <task>/<metric>                          overall value
    <task>/<metric>/<slice>=<label>          value on one bucket of a slice
    <task>/n  and  <task>/n/<slice>=<label>  how many items those values are over
    <task>/<metric>/robust:<perturbation>        score on perturbed inputs
    <task>/<metric>/robust:<perturbation>/delta  perturbed minus clean, same items
    <task>/human:<annotator>                 mean human score (after annotations are imported)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from amylum.evaluation.config import SliceConfig
from amylum.evaluation.metrics import Metric
from amylum.evaluation.slices import partition
from amylum.evaluation.tasks import Prediction


def _score(metric: Metric, preds: Sequence[Prediction]) -> dict[str, Any]:
    s = metric.score([p.item for p in preds])
    out = {"value": s.value, "n": len(preds)}
    err = s.stderr()
    if err is not None:
        out["stderr"] = err
    if s.per_item is not None:
        out["per_item"] = dict(zip((p.id for p in preds), s.per_item))
    return out


def score_predictions(metrics: Sequence[Metric], preds: Sequence[Prediction],
                      slices: Sequence[SliceConfig]) -> dict[str, Any]:
    """``{"metrics": {name: score}, "slices": {slice: {label: {"n", "metrics"}}}}``."""
    if not preds:
        return {"metrics": {}, "slices": {}}
    scores = {m.name: {**_score(m, preds), **m.describe()} for m in metrics}
    by_id = {p.id: p for p in preds}
    sliced: dict[str, Any] = {}
    for cfg in slices:
        buckets = partition(cfg, ((p.id, p.meta) for p in preds))
        sliced[cfg.name] = {
            label: {"n": len(ids), "metrics": {m.name: _strip(_score(m, [by_id[i] for i in ids])) for m in metrics}}
            for label, ids in buckets.items()
        }
    return {"metrics": scores, "slices": sliced}


def _strip(score: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in score.items() if k != "per_item"}


def robustness_entry(metrics: Sequence[Metric], clean: Sequence[Prediction], perturbed: Sequence[Prediction],
                     description: dict[str, Any]) -> dict[str, Any]:
    """Clean vs perturbed scores over the items both runs have."""
    ids = {p.id for p in perturbed} & {p.id for p in clean}
    clean = [p for p in clean if p.id in ids]
    perturbed = [p for p in perturbed if p.id in ids]
    entry: dict[str, Any] = {**description, "n": len(ids), "metrics": {}}
    if not ids:
        return entry
    for m in metrics:
        c, q = m.score([p.item for p in clean]).value, m.score([p.item for p in perturbed]).value
        entry["metrics"][m.name] = {"clean": c, "perturbed": q, "delta": q - c, "scorer": m.scorer}
    return entry


@dataclass
class EvalResults:
    step: int | None
    final: bool = False
    seconds: float = 0.0
    truncated: bool = False
    tasks: dict[str, dict[str, Any]] = field(default_factory=dict)

    def to_json(self, per_item: bool = False) -> dict[str, Any]:
        tasks = {}
        for name, t in self.tasks.items():
            t = dict(t)
            if not per_item and "metrics" in t:
                t["metrics"] = {k: _strip(v) for k, v in t["metrics"].items()}
            tasks[name] = t
        return {"step": self.step, "final": self.final, "seconds": self.seconds, "truncated": self.truncated,
                "tasks": tasks}

    def flat(self, prefix: str = "") -> dict[str, float]:
        return flatten(self.to_json(), prefix)


def flatten(results: dict[str, Any], prefix: str = "") -> dict[str, float]:
    """The flat metric dict of a results tree (see the module docstring for the keys)."""
    out: dict[str, float] = {}
    for task, t in results.get("tasks", {}).items():
        base = f"{prefix}{task}"
        if t.get("metrics"):
            out[f"{base}/n"] = float(next(iter(t["metrics"].values()))["n"])
        for name, s in t.get("metrics", {}).items():
            out[f"{base}/{name}"] = float(s["value"])
        for slice_name, buckets in t.get("slices", {}).items():
            for label, b in buckets.items():
                out[f"{base}/n/{slice_name}={label}"] = float(b["n"])
                for name, s in b["metrics"].items():
                    out[f"{base}/{name}/{slice_name}={label}"] = float(s["value"])
        for pert, r in t.get("robustness", {}).items():
            for name, s in r.get("metrics", {}).items():
                out[f"{base}/{name}/robust:{pert}"] = float(s["perturbed"])
                out[f"{base}/{name}/robust:{pert}/delta"] = float(s["delta"])
        for annotator, h in t.get("human", {}).items():
            out[f"{base}/human:{annotator}"] = float(h["value"])
    return out

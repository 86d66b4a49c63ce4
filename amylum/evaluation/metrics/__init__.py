"""The metric registry: names (or import paths) in a task's config → :class:`Metric` objects."""

from __future__ import annotations

from typing import Any

from amylum.evaluation.metrics.base import EvalItem, Metric, MetricScore
from amylum.evaluation.metrics.cider import CiderD
from amylum.evaluation.metrics.custom import build_custom
from amylum.evaluation.metrics.match import ExactMatch, MultipleChoiceAccuracy
from amylum.evaluation.metrics.rouge import RougeL
from amylum.evaluation.metrics.sacre import Bleu, Chrf

# name → (class, default options). ``accuracy`` is exact match with VQA-style normalisation.
REGISTRY: dict[str, tuple[type[Metric], dict[str, Any]]] = {
    "exact_match": (ExactMatch, {"normalize": "basic"}),
    "accuracy": (ExactMatch, {"normalize": "vqa"}),
    "multiple_choice": (MultipleChoiceAccuracy, {}),
    "bleu": (Bleu, {}),
    "chrf": (Chrf, {}),
    "rouge_l": (RougeL, {}),
    "cider": (CiderD, {}),
}


def build_metric(spec: str | dict[str, Any]) -> Metric:
    """``"bleu"``, ``"pkg.mod:fn"`` or ``{"name": ..., "type": "bleu" | "pkg.mod:fn", **options}``.

    ``name`` is the key the score is logged under (default: the type), so one task can carry
    e.g. two exact-match scores with different normalisations.
    """
    if isinstance(spec, str):
        spec = {"type": spec}
    if not isinstance(spec, dict):
        raise ValueError(f"a metric is a name or a table, got {spec!r}")
    options = dict(spec)
    kind = options.pop("type", None) or options.get("name")
    if not kind:
        raise ValueError(f"metric {spec!r} needs a 'type' (one of {', '.join(REGISTRY)} or 'module:function')")
    name = str(options.pop("name", None) or kind.rsplit(":", 1)[-1])
    if "/" in name or "=" in name:
        raise ValueError(f"metric name {name!r} may not contain '/' or '=' (they separate metric keys)")
    if kind in REGISTRY:
        cls, defaults = REGISTRY[kind]
        return cls(name=name, params={**defaults, **options})
    if ":" in kind:
        return build_custom(name, kind, options)
    raise ValueError(f"unknown metric {kind!r}; known: {', '.join(REGISTRY)}, or a custom 'module:function'")


__all__ = ["REGISTRY", "EvalItem", "Metric", "MetricScore", "build_metric"]

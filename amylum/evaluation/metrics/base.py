"""What every metric is: a named, versioned scorer of (prediction, references) items.

Every score carries the metric's name, version and scorer (who computed it), so a number in a
report can always be traced to the code and settings that produced it; human scores use the
same fields with ``scorer = "human:<annotator>"``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class EvalItem:
    """One scored example: the model's output and what it is compared against."""

    id: str
    prediction: str
    references: tuple[str, ...]
    choices: tuple[str, ...] | None = None  # multiple choice: the options, in the order shown


@dataclass
class MetricScore:
    value: float
    # Per-item scores when the metric is their mean (accuracy, ROUGE-L); None for corpus-level
    # metrics (BLEU, chrF, CIDEr), whose value is not a mean of per-item numbers.
    per_item: list[float] | None = None

    def stderr(self) -> float | None:
        """Standard error of the mean of ``per_item`` (None without per-item scores or with < 2)."""
        if not self.per_item or len(self.per_item) < 2:
            return None
        n = len(self.per_item)
        mean = sum(self.per_item) / n
        var = sum((x - mean) ** 2 for x in self.per_item) / (n - 1)
        return math.sqrt(var / n)


@dataclass
class Metric:
    """Base class: subclasses set the class attributes and implement ``compute``."""

    name: str = ""
    params: dict[str, Any] = field(default_factory=dict)

    version = "1"
    scale = "0-1"  # "0-1" or "0-100": what range the value lives in
    higher_is_better = True

    @property
    def scorer(self) -> str:
        """Who computed the number; automated scorers say ``auto:…``, humans ``human:…``."""
        return f"auto:amylum.{type(self).__name__}"

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "version": self.version, "scorer": self.scorer, "scale": self.scale,
                "params": dict(self.params), "higher_is_better": self.higher_is_better}

    def score(self, items: Sequence[EvalItem]) -> MetricScore:
        if not items:
            raise ValueError(f"metric {self.name!r} needs at least one item")
        for it in items:
            if not it.references:
                raise ValueError(f"metric {self.name!r}: item {it.id!r} has no reference")
        return self.compute(items)

    def compute(self, items: Sequence[EvalItem]) -> MetricScore:  # pragma: no cover - abstract
        raise NotImplementedError


def mean_score(per_item: list[float]) -> MetricScore:
    return MetricScore(sum(per_item) / len(per_item), per_item)

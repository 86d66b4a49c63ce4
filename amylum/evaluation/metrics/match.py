"""Exact match / accuracy and multiple-choice accuracy."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from amylum.evaluation.metrics.base import EvalItem, Metric, MetricScore, mean_score
from amylum.evaluation.normalize import check_normalization, normalize


@dataclass
class ExactMatch(Metric):
    """1 if the normalised prediction equals any normalised reference, else 0; the mean over items.

    ``normalize``: ``"none"``, ``"basic"`` or ``"vqa"`` (see ``amylum.evaluation.normalize``).
    Registered as ``exact_match`` (default ``basic``) and ``accuracy`` (default ``vqa``).
    """

    def __post_init__(self) -> None:
        self.params.setdefault("normalize", "basic")
        check_normalization(self.params["normalize"])
        unknown = set(self.params) - {"normalize"}
        if unknown:
            raise ValueError(f"metric {self.name!r}: unknown options {sorted(unknown)} (known: normalize)")

    def compute(self, items: Sequence[EvalItem]) -> MetricScore:
        level = self.params["normalize"]
        hits = []
        for it in items:
            pred = normalize(it.prediction, level)
            hits.append(float(any(pred == normalize(r, level) for r in it.references)))
        return mean_score(hits)


_LETTER = re.compile(r"^\(?([A-Za-z])\)?(?:[.):\s]|$)")


def choice_index(text: str, choices: Sequence[str]) -> int | None:
    """Which option ``text`` picks: a leading letter (``B``, ``(b)``, ``B. cat``) or an option's text.

    Returns None when the text names no option (the item then counts as wrong).
    """
    stripped = text.strip()
    m = _LETTER.match(stripped)
    if m:
        idx = ord(m.group(1).upper()) - ord("A")
        if 0 <= idx < len(choices):
            return idx
    norm = normalize(stripped, "vqa")
    matches = [i for i, c in enumerate(choices) if normalize(c, "vqa") == norm]
    return matches[0] if len(matches) == 1 else None


@dataclass
class MultipleChoiceAccuracy(Metric):
    """The share of items whose prediction picks the reference option.

    Both the prediction and the reference may be a letter (``"B"``) or the option's text; items
    need ``choices`` (the record's ``choices`` list).
    """

    def __post_init__(self) -> None:
        if self.params:
            raise ValueError(f"metric {self.name!r} takes no options, got {sorted(self.params)}")

    def compute(self, items: Sequence[EvalItem]) -> MetricScore:
        hits = []
        for it in items:
            if not it.choices:
                raise ValueError(f"metric {self.name!r}: item {it.id!r} has no 'choices'")
            gold = choice_index(it.references[0], it.choices)
            if gold is None:
                raise ValueError(
                    f"metric {self.name!r}: item {it.id!r} reference {it.references[0]!r} names none of "
                    f"its {len(it.choices)} choices"
                )
            hits.append(float(choice_index(it.prediction, it.choices) == gold))
        return mean_score(hits)

"""ROUGE-L: longest-common-subsequence F-measure, as coco-caption computes it.

Per item, with words of the prediction ``c`` and each reference ``r``::

    P = max_r LCS(c, r) / |c|      R = max_r LCS(c, r) / |r|
    F = (1 + β²) P R / (R + β² P)   with β = 1.2 (coco-caption's default)

The value is the mean of F over items, in [0, 1]. Words: lower case, punctuation removed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from amylum.evaluation.metrics.base import EvalItem, Metric, MetricScore, mean_score
from amylum.evaluation.normalize import tokenize_words


def lcs_length(a: Sequence[str], b: Sequence[str]) -> int:
    """Length of the longest common subsequence (O(|a|·|b|) time, O(|b|) memory)."""
    prev = [0] * (len(b) + 1)
    for x in a:
        cur = [0]
        for j, y in enumerate(b):
            cur.append(prev[j] + 1 if x == y else max(prev[j + 1], cur[j]))
        prev = cur
    return prev[-1]


def rouge_l(prediction: str, references: Sequence[str], beta: float = 1.2) -> float:
    cand = tokenize_words(prediction)
    if not cand:
        return 0.0
    precisions, recalls = [], []
    for ref in references:
        words = tokenize_words(ref)
        lcs = lcs_length(cand, words)
        precisions.append(lcs / len(cand))
        recalls.append(lcs / len(words) if words else 0.0)
    p, r = max(precisions), max(recalls)
    if p == 0 or r == 0:
        return 0.0
    return (1 + beta**2) * p * r / (r + beta**2 * p)


@dataclass
class RougeL(Metric):
    def __post_init__(self) -> None:
        self.params.setdefault("beta", 1.2)
        unknown = set(self.params) - {"beta"}
        if unknown:
            raise ValueError(f"metric {self.name!r}: unknown options {sorted(unknown)} (known: beta)")

    def compute(self, items: Sequence[EvalItem]) -> MetricScore:
        beta = float(self.params["beta"])
        return mean_score([rouge_l(it.prediction, it.references, beta) for it in items])

"""BLEU and chrF through sacrebleu, so the numbers match published ones (0–100 scale).

The scorer string is sacrebleu's own signature (``nrefs:1|case:mixed|eff:no|tok:13a|…``),
which is what makes BLEU numbers comparable between papers.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from amylum.evaluation.metrics.base import EvalItem, Metric, MetricScore


def _sacrebleu():
    try:
        import sacrebleu
    except ImportError as e:  # an optional dependency: only BLEU and chrF need it
        raise ImportError("the bleu and chrf metrics need sacrebleu: pip install sacrebleu") from e
    return sacrebleu


def _reference_streams(items: Sequence[EvalItem]) -> list[list[str | None]]:
    """sacrebleu's layout: one stream per reference slot; None where an item has fewer references."""
    width = max(len(it.references) for it in items)
    return [[it.references[k] if k < len(it.references) else None for it in items] for k in range(width)]


@dataclass
class _SacreMetric(Metric):
    scale = "0-100"
    _signature: str = field(default="", init=False, repr=False)

    def _build(self):  # pragma: no cover - abstract
        raise NotImplementedError

    @property
    def version(self) -> str:  # type: ignore[override]
        return _sacrebleu().__version__

    @property
    def scorer(self) -> str:
        sig = self._signature or f"sacrebleu {self.version}"
        return f"auto:{sig}"

    def compute(self, items: Sequence[EvalItem]) -> MetricScore:
        metric = self._build()
        result = metric.corpus_score([it.prediction for it in items], _reference_streams(items))
        self._signature = f"sacrebleu:{metric.get_signature()}"
        return MetricScore(float(result.score))


@dataclass
class Bleu(_SacreMetric):
    """Corpus BLEU. Options: ``tokenize`` (default ``13a``), ``lowercase`` (false), ``smooth_method``."""

    def _build(self):
        allowed = {"tokenize", "lowercase", "smooth_method", "smooth_value", "max_ngram_order", "effective_order"}
        unknown = set(self.params) - allowed
        if unknown:
            raise ValueError(f"metric {self.name!r}: unknown options {sorted(unknown)} (known: {sorted(allowed)})")
        return _sacrebleu().metrics.BLEU(**self.params)


@dataclass
class Chrf(_SacreMetric):
    """Corpus chrF (``word_order=2`` gives chrF++). Options: ``char_order``, ``word_order``, ``beta``, ``lowercase``."""

    def _build(self):
        allowed = {"char_order", "word_order", "beta", "lowercase", "whitespace", "eps_smoothing"}
        unknown = set(self.params) - allowed
        if unknown:
            raise ValueError(f"metric {self.name!r}: unknown options {sorted(unknown)} (known: {sorted(allowed)})")
        return _sacrebleu().metrics.CHRF(**self.params)

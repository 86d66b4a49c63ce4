"""CIDEr-D (Vedantam et al., 2015) as coco-caption's ``CiderScorer`` computes it.

For n = 1..4, every caption becomes a TF-IDF vector of its n-grams; document frequencies
come from the references of the evaluated set (each item's references count once per n-gram)
and IDF is ``log(N_items) - log(max(1, df))``. Per item and reference::

    sim_n = Σ_g min(c_g, r_g) · r_g / (‖c‖ ‖r‖) · exp(-(ℓ_c - ℓ_r)² / (2σ²))

(``min`` clips the candidate's weights: the "-D" that stops repetition from paying;
ℓ is the number of bigrams, as in coco-caption; σ = 6). The item's score is
10 · mean over n and references of ``sim_n``; the value is the mean over items (coco-caption's
scale, where ~0.9–1.2 is typical of COCO models; papers print it ×100).

Because IDF comes from the evaluated set, CIDEr of a subset (a slice) is computed with that
subset's statistics, like running coco-caption on the subset; and a set of one item scores 0.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

from amylum.evaluation.metrics.base import EvalItem, Metric, MetricScore, mean_score
from amylum.evaluation.normalize import tokenize_words


def ngram_counts(words: Sequence[str], n: int) -> Counter:
    return Counter(tuple(words[i : i + k]) for k in range(1, n + 1) for i in range(len(words) - k + 1))


def cider_d(predictions: Sequence[str], references: Sequence[Sequence[str]], n: int = 4, sigma: float = 6.0) -> list[float]:
    """Per-item CIDEr-D scores."""
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions but {len(references)} reference lists")
    refs = [[ngram_counts(tokenize_words(r), n) for r in rs] for rs in references]
    cands = [ngram_counts(tokenize_words(p), n) for p in predictions]
    df: Counter = Counter()
    for rs in refs:
        df.update(set().union(*(set(r) for r in rs)))
    log_n = math.log(float(len(refs)))

    def vec(counts: Counter):
        v = [dict() for _ in range(n)]
        norm = [0.0] * n
        length = 0
        for gram, tf in counts.items():
            k = len(gram) - 1
            w = float(tf) * (log_n - math.log(max(1.0, df[gram])))
            v[k][gram] = w
            norm[k] += w * w
            if k == 1:
                length += tf
        return v, [math.sqrt(x) for x in norm], length

    scores = []
    for cand, rs in zip(cands, refs):
        vc, nc, lc = vec(cand)
        total = 0.0
        for r in rs:
            vr, nr, lr = vec(r)
            penalty = math.exp(-((lc - lr) ** 2) / (2 * sigma**2))
            for k in range(n):
                val = sum(min(w, vr[k][g]) * vr[k][g] for g, w in vc[k].items() if g in vr[k])
                if nc[k] != 0 and nr[k] != 0:
                    val /= nc[k] * nr[k]
                total += val * penalty
        scores.append(10.0 * total / n / len(rs))
    return scores


@dataclass
class CiderD(Metric):
    scale = "0-10"

    def __post_init__(self) -> None:
        self.params.setdefault("n", 4)
        self.params.setdefault("sigma", 6.0)
        unknown = set(self.params) - {"n", "sigma"}
        if unknown:
            raise ValueError(f"metric {self.name!r}: unknown options {sorted(unknown)} (known: n, sigma)")

    def compute(self, items: Sequence[EvalItem]) -> MetricScore:
        per_item = cider_d([it.prediction for it in items], [it.references for it in items],
                           n=int(self.params["n"]), sigma=float(self.params["sigma"]))
        # The mean of per-item scores, but the items are not independent (shared IDF): no stderr.
        return MetricScore(mean_score(per_item).value, None)

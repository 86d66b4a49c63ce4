"""The per-sample work model: counts as arrays (:class:`Features`), the linear interface to the
cost model (:class:`WorkCoefficients`), measured corrections (:class:`Corrections`) and the
resulting per-sample work (:class:`WorkTable`, :func:`work_table`). See
:mod:`amylum.planner.workload` for the formulas.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from .sample_meta import SampleMeta

MASK_MODES = ("multimodal", "causal")


@dataclass(frozen=True)
class Features:
    """Per-sample counts as arrays of length N (one entry per sample)."""

    text_tokens: np.ndarray
    items: Mapping[str, np.ndarray]  # items per sample, per modality
    tokens: Mapping[str, np.ndarray]  # LLM tokens per sample, per modality
    segment_entries: np.ndarray  # Σ s(s−1)/2 over the sample's modality segments

    def __post_init__(self) -> None:
        n = len(self.text_tokens)
        for name, arrs in (("items", self.items), ("tokens", self.tokens)):
            for m, a in arrs.items():
                if len(a) != n:
                    raise ValueError(f"{name}[{m!r}] has {len(a)} entries for {n} samples")
        if set(self.items) != set(self.tokens):
            raise ValueError(f"items and tokens name different modalities: {sorted(self.items)} vs {sorted(self.tokens)}")

    def __len__(self) -> int:
        return len(self.text_tokens)

    @property
    def modalities(self) -> tuple[str, ...]:
        return tuple(self.items)

    @property
    def llm_tokens(self) -> np.ndarray:
        out = self.text_tokens.astype(np.float64)
        for t in self.tokens.values():
            out = out + t
        return out

    def mask_entries(self, mode: str = "multimodal") -> np.ndarray:
        if mode not in MASK_MODES:
            raise ValueError(f"unknown mask mode {mode!r}; choose from {MASK_MODES}")
        L = self.llm_tokens
        causal = L * (L + 1) / 2
        return causal + self.segment_entries if mode == "multimodal" else causal

    def take(self, idx) -> "Features":
        idx = np.asarray(idx)
        return Features(self.text_tokens[idx], {m: a[idx] for m, a in self.items.items()},
                        {m: a[idx] for m, a in self.tokens.items()}, self.segment_entries[idx])

    @staticmethod
    def from_metas(metas: Sequence[SampleMeta], modalities: Iterable[str] = ()) -> "Features":
        mods = list(dict.fromkeys([*modalities, *(m for s in metas for m in s.items)]))
        n = len(metas)
        text = np.fromiter((s.text_tokens for s in metas), dtype=np.float64, count=n)
        items = {m: np.zeros(n) for m in mods}
        toks = {m: np.zeros(n) for m in mods}
        seg = np.zeros(n)
        for i, s in enumerate(metas):
            for m, ts in s.items.items():
                items[m][i] = len(ts)
                toks[m][i] = sum(ts)
                seg[i] += sum(t * (t - 1) / 2 for t in ts)
        return Features(text, items, toks, seg)


# ---------------------------------------------------------------------------------------------
# the work model


@dataclass(frozen=True)
class WorkCoefficients:
    """The interface between the cost model and the per-sample estimate (see module docstring)."""

    encoder_per_item: Mapping[str, float]
    encoder_per_token: Mapping[str, float]
    llm_per_token: float
    llm_per_mask_entry: float
    mask: str = "multimodal"
    unit: str = "gpu_s"

    def __post_init__(self) -> None:
        if self.mask not in MASK_MODES:
            raise ValueError(f"unknown mask mode {self.mask!r}; choose from {MASK_MODES}")
        if set(self.encoder_per_item) != set(self.encoder_per_token):
            raise ValueError("encoder_per_item and encoder_per_token must name the same modalities")
        vals = [*self.encoder_per_item.values(), *self.encoder_per_token.values(),
                self.llm_per_token, self.llm_per_mask_entry]
        if any(v < 0 or not math.isfinite(v) for v in vals):
            raise ValueError(f"work coefficients must be finite and >= 0, got {self}")

    @property
    def modalities(self) -> tuple[str, ...]:
        return tuple(self.encoder_per_item)


@dataclass(frozen=True)
class Corrections:
    """Measured/predicted factors per component ("llm" or a modality name); 1.0 when unmeasured."""

    factors: Mapping[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        bad = {k: v for k, v in self.factors.items() if not (v > 0 and math.isfinite(v))}
        if bad:
            raise ValueError(f"correction factors must be finite and > 0, got {bad}")

    def get(self, component: str) -> float:
        return float(self.factors.get(component, 1.0))

    @staticmethod
    def fit(observations: Iterable[tuple[str, float, float]]) -> "Corrections":
        """Least-squares factor per component from ``(component, predicted, measured)`` timings
        (e.g. per-microbatch encoder and LLM stage times from a profile run): minimises
        Σ (measured − f·predicted)², i.e. f = Σ p·m / Σ p²."""
        num: dict[str, float] = {}
        den: dict[str, float] = {}
        for comp, p, m in observations:
            if p < 0 or m < 0:
                raise ValueError(f"{comp}: predicted and measured times must be >= 0, got {p}, {m}")
            num[comp] = num.get(comp, 0.0) + p * m
            den[comp] = den.get(comp, 0.0) + p * p
        return Corrections({c: num[c] / den[c] for c in num if den[c] > 0})


@dataclass(frozen=True)
class WorkTable:
    """Per-sample work: ``encoder`` has one column per modality (order ``modalities``)."""

    encoder: np.ndarray  # (N, K)
    llm: np.ndarray  # (N,)
    tokens: np.ndarray  # (N,) LLM tokens, for token-based baselines
    modalities: tuple[str, ...]

    def __post_init__(self) -> None:
        n = len(self.llm)
        if self.encoder.shape != (n, len(self.modalities)) or self.tokens.shape != (n,):
            raise ValueError(f"inconsistent shapes: encoder {self.encoder.shape}, llm {self.llm.shape}, "
                             f"tokens {self.tokens.shape}, {len(self.modalities)} modalities")
        if n and (self.encoder.min(initial=0) < 0 or self.llm.min() < 0):
            raise ValueError("work must be >= 0")

    def __len__(self) -> int:
        return len(self.llm)

    @property
    def matrix(self) -> np.ndarray:
        """(N, K+1): encoder columns then the LLM column: the dimensions balanced separately."""
        return np.column_stack([self.encoder, self.llm])

    @property
    def total(self) -> np.ndarray:
        return self.encoder.sum(axis=1) + self.llm

    def take(self, idx) -> "WorkTable":
        idx = np.asarray(idx)
        return WorkTable(self.encoder[idx], self.llm[idx], self.tokens[idx], self.modalities)

    @staticmethod
    def from_arrays(encoder, llm, tokens=None, modalities: Sequence[str] | None = None) -> "WorkTable":
        llm = np.asarray(llm, dtype=np.float64)
        enc = np.asarray(encoder, dtype=np.float64).reshape(len(llm), -1)
        mods = tuple(modalities) if modalities is not None else tuple(f"enc{i}" for i in range(enc.shape[1]))
        toks = llm if tokens is None else np.asarray(tokens, dtype=np.float64)
        return WorkTable(enc, llm, toks, mods)


def work_table(features: Features, coef: WorkCoefficients, corrections: Corrections | None = None) -> WorkTable:
    """Per-sample work of every sample, vectorised."""
    corr = corrections or Corrections()
    missing = sorted(set(features.modalities) - set(coef.modalities))
    if missing:
        raise ValueError(f"samples have {missing} items but the work model has no encoder for them "
                         f"(encoders: {list(coef.modalities)})")
    mods = coef.modalities
    n = len(features)
    enc = np.zeros((n, len(mods)))
    for j, m in enumerate(mods):
        if m in features.items:
            w = coef.encoder_per_item[m] * features.items[m] + coef.encoder_per_token[m] * features.tokens[m]
            enc[:, j] = w * corr.get(m)
    L = features.llm_tokens
    llm = (coef.llm_per_token * L + coef.llm_per_mask_entry * features.mask_entries(coef.mask)) * corr.get("llm")
    return WorkTable(enc, llm, L, mods)

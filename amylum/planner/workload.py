"""Per-sample work estimated from record metadata, before any sample is loaded.

A sample's work has one part per encoder (modality) and one for the LLM. Both come from a small
linear interface, :class:`WorkCoefficients`, whose numbers are derived from the planner's one cost
model (:func:`coefficients_from_preset`) and optionally corrected by measured timings
(:class:`Corrections`):

- encoder work of modality m = ``encoder_per_item[m] · items + encoder_per_token[m] · tokens``;
  ``items`` are fixed-size encoder inputs (an image tile, a Whisper window padded to 30 s: the
  encoder's own attention length is fixed by its config, so its cost per item is a constant),
  ``tokens`` are the LLM-side tokens the items yield (the projector's work, and any encoder work
  that does scale with clip length);
- LLM work = ``llm_per_token · L + llm_per_mask_entry · E``, with L the sample's LLM tokens (text +
  modality tokens) and E the number of allowed (query, key) pairs of its attention mask.

E follows DESIGN §5: causal, plus bidirectional inside each image / clip. For a sequence of L
tokens whose modality segments have s_1 … s_n tokens that is L(L+1)/2 + Σ s_i(s_i−1)/2, whatever
the segment order (each segment adds its strictly-upper triangle to the causal one). ``causal``
mode (plain causal, what HF LLaVA does) drops the second term.

Units are GPU-seconds on one GPU (tp=1) when the coefficients come from the cost model; any
consistent unit works for balancing. Everything is NumPy; nothing imports torch.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace

import numpy as np

MASK_MODES = ("multimodal", "causal")

# ---------------------------------------------------------------------------------------------
# sample metadata


@dataclass(frozen=True)
class SampleMeta:
    """What the planner knows of a sample without loading it.

    ``items`` maps a modality name to the LLM tokens of each of its items (one entry per image or
    clip, in any order).
    """

    text_tokens: int
    items: Mapping[str, tuple[int, ...]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.text_tokens < 0:
            raise ValueError(f"text_tokens must be >= 0, got {self.text_tokens}")
        for m, toks in self.items.items():
            if any(t < 1 for t in toks):
                raise ValueError(f"modality {m!r}: every item yields >= 1 token, got {tuple(toks)}")


def default_text_tokens(text: str) -> int:
    """A tokenizer-free estimate (≈4 characters per token for English BPE vocabularies).

    Pass a real ``len(tokenizer(text).input_ids)`` to :func:`sample_meta_from_record` when exact
    counts matter; balancing only needs relative sizes.
    """
    return max(1, math.ceil(len(text) / 4))


def sample_meta_from_record(record, specs: Mapping[str, object],
                            text_tokens: Callable[[str], int] = default_text_tokens,
                            template_tokens_per_turn: int = 4) -> SampleMeta:
    """SampleMeta of a parsed :class:`amylum.data.records.Record`, using the modality specs'
    ``num_tokens``; no media file is opened.

    ``specs`` is ``{modality name: ImageInputSpec | AudioInputSpec | TensorInputSpec}`` (the
    processor's). Audio length must be in the record's metadata, as ``audio_seconds`` or
    ``audio_num_samples`` (a number, or a list with one entry per clip).
    """
    by_kind = {}
    for name, spec in specs.items():
        kind = getattr(spec, "kind", None)
        by_kind[name if kind == "tensor" else kind] = name
    items: dict[str, tuple[int, ...]] = {}
    for kind, paths in record.media.items():
        if kind not in by_kind:
            raise ValueError(f"record {record.id}: has {kind} items but no modality reads {kind!r} "
                             f"(modalities: {sorted(specs)})")
        name = by_kind[kind]
        spec = specs[name]
        if hasattr(spec, "sampling_rate"):
            lengths = _audio_num_samples(record, len(paths), spec.sampling_rate)
            items[name] = tuple(spec.num_tokens(n) for n in lengths)
        else:
            items[name] = tuple(spec.num_tokens() for _ in paths)
    for name, spec in specs.items():  # tensor modalities are read from a key named like them
        if getattr(spec, "kind", None) == "tensor" and name in record.extra:
            v = record.extra[name]
            n = len(v) if isinstance(v, list) else 1
            items[name] = tuple(spec.num_tokens() for _ in range(n))
    placeholders = [getattr(s, "placeholder", None) for s in specs.values()]

    def strip(text: str) -> str:  # placeholders become modality tokens, already counted in items
        for p in placeholders:
            if p:
                text = text.replace(p, " ")
        return text

    text = sum(text_tokens(strip(t.text)) + template_tokens_per_turn for t in record.turns)
    return SampleMeta(text_tokens=text, items=items)


def _audio_num_samples(record, n_clips: int, sampling_rate: int) -> list[int]:
    for key, scale in (("audio_num_samples", 1), ("audio_seconds", sampling_rate)):
        if key in record.extra:
            v = record.extra[key]
            vals = v if isinstance(v, list) else [v]
            if len(vals) != n_clips:
                raise ValueError(f"record {record.id}: {key} has {len(vals)} entries for {n_clips} audio clips")
            return [max(1, int(round(float(x) * scale))) for x in vals]
    raise ValueError(f"record {record.id}: audio length is unknown before loading; add 'audio_seconds' "
                     f"or 'audio_num_samples' to the record (one number per clip)")


# ---------------------------------------------------------------------------------------------
# features: the per-sample numbers the work model needs, as arrays


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


# ---------------------------------------------------------------------------------------------
# batch-level statistics (Entrain's observation: aggregates over a global batch vary little)


@dataclass(frozen=True)
class BatchStats:
    """Coefficient of variation (std/mean) per component, per sample and per global batch."""

    components: tuple[str, ...]
    per_sample_cv: dict[str, float]
    per_batch_cv: dict[str, float]
    per_batch_mean: dict[str, float]  # mean work of a global batch
    global_batch: int
    batches: int

    def table(self) -> str:
        rows = [f"{'component':<10} {'CV/sample':>10} {'CV/batch':>9} {'ratio':>7}"]
        for c in self.components:
            s, b = self.per_sample_cv[c], self.per_batch_cv[c]
            ratio = s / b if b > 0 else float("inf")
            rows.append(f"{c:<10} {s:>10.3f} {b:>9.4f} {ratio:>6.1f}x")
        return "\n".join(rows)


def cv(x: np.ndarray, axis=None) -> np.ndarray | float:
    """std/mean; 0 where the mean is 0 (a component absent everywhere does not vary)."""
    x = np.asarray(x, dtype=np.float64)
    m = x.mean(axis=axis)
    s = x.std(axis=axis)
    return np.divide(s, m, out=np.zeros_like(np.asarray(s, dtype=np.float64)), where=np.asarray(m) > 0)


def batch_stats(table: WorkTable, global_batch: int, batches: int | None = None, seed: int = 0) -> BatchStats:
    """Statistics of work per global batch over a dataset (or ``batches`` random global batches).

    Global batches are consecutive chunks of one seeded permutation (what the sampler draws).
    """
    n = len(table)
    if global_batch < 1 or global_batch > n:
        raise ValueError(f"global_batch must be in [1, {n}], got {global_batch}")
    perm = np.random.default_rng(seed).permutation(n)
    k = n // global_batch if batches is None else min(batches, n // global_batch)
    if k < 2:
        raise ValueError(f"need at least two global batches of {global_batch} from {n} samples")
    idx = perm[: k * global_batch].reshape(k, global_batch)
    comps = (*table.modalities, "llm", "total")
    cols = np.column_stack([table.encoder, table.llm, table.total])
    sums = cols[idx].sum(axis=1)  # (k, components)
    return BatchStats(components=comps,
                      per_sample_cv={c: float(v) for c, v in zip(comps, cv(cols, axis=0))},
                      per_batch_cv={c: float(v) for c, v in zip(comps, cv(sums, axis=0))},
                      per_batch_mean={c: float(v) for c, v in zip(comps, sums.mean(axis=0))},
                      global_batch=global_batch, batches=k)


# ---------------------------------------------------------------------------------------------
# adapter: coefficients from the planner's ModelSpec + CostModel


def _no_overhead(cluster):
    # per-sample work excludes per-action launch overhead: that is paid per microbatch, not per sample
    return replace(cluster, gpu=replace(cluster.gpu, layer_overhead_s=0.0))


def coefficients_from_preset(name: str, cluster=None, scenario: str = "all_trainable", profile=None,
                             checkpointing: bool = False, mask: str = "multimodal",
                             tokens_per_item: Mapping[str, int] | None = None) -> WorkCoefficients:
    """Derive :class:`WorkCoefficients` from a preset of the planner grid and the one cost model.

    Probes the cost model on the preset's layers (frozen-aware through ``scenario``, per-kind rates
    from ``profile``) at one item per modality and three LLM lengths; LLM time is exactly quadratic
    in the sequence length there, so three points recover the per-token and attention terms.
    ``tokens_per_item`` overrides a branch's tokens per item (e.g. one 384² SigLIP tile = 729).
    """
    from .configs import EncoderInput, model_spec_from_configs
    from .cost import CostModel, grad_needs
    from .presets import preset_configs
    from .spec import ClusterSpec, freeze

    cluster = _no_overhead(cluster or ClusterSpec.of(8))
    cm = CostModel(cluster, profile, checkpointing=checkpointing)
    llm_cfg, encs = preset_configs(name)
    overrides = dict(tokens_per_item or {})
    unknown = sorted(set(overrides) - set(encs))
    if unknown:
        raise ValueError(f"preset {name} has no branch {unknown}; branches: {sorted(encs)}")
    one = {b: EncoderInput(e.config, items=1, tokens_per_item=overrides.get(b, e.tokens_per_item), merge=e.merge)
           for b, e in encs.items()}

    def spec(text):
        return freeze(model_spec_from_configs(name, llm_cfg, one, text_tokens=text), scenario)

    probes = [spec(t) for t in (256, 1024, 4096)]
    needs = grad_needs(probes[0])
    per_item: dict[str, float] = {}
    per_token: dict[str, float] = {}
    for br in probes[0].branches:
        enc = [l for l in br.layers if l.module.endswith(".encoder")]
        proj = [l for l in br.layers if not l.module.endswith(".encoder")]
        per_item[br.name] = cm.stage_cost(enc, needs, 1, 1).total if enc else 0.0
        out_tokens = proj[-1].tokens if proj else 1
        per_token[br.name] = (cm.stage_cost(proj, needs, 1, 1).total / out_tokens) if proj else 0.0
    seq = np.array([p.llm[1].tokens for p in probes], dtype=np.float64)
    times = np.array([cm.stage_cost(list(p.llm), grad_needs(p), 1, 1).total for p in probes])
    c2, c1, _c0 = np.linalg.solve(np.vander(seq, 3), times)
    # the cost model counts causal attention as seq²/2 (query, key) pairs, so one pair costs 2·c2
    return WorkCoefficients(per_item, per_token, llm_per_token=max(float(c1), 0.0),
                            llm_per_mask_entry=max(2 * float(c2), 0.0), mask=mask)

"""Slices: named partitions of the evaluated items by their metadata.

A slice maps every item to exactly one label (items lacking the property get ``none`` or
``missing``), so its buckets partition the data: counts add up to the total and every metric
can be shown per bucket beside the overall number, with the bucket's size.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from amylum.evaluation.config import SliceConfig
from amylum.evaluation.normalize import answer_type


@dataclass(frozen=True)
class ItemMeta:
    """What slices look at, gathered when a record is processed."""

    media_counts: Mapping[str, int] = field(default_factory=dict)  # media kind → items ("image": 2)
    audio_seconds: float | None = None
    prompt_tokens: int = 0
    reference: str = ""
    fields: Mapping[str, Any] = field(default_factory=dict)  # the record's other keys (task, source, …)

    def to_json(self) -> dict[str, Any]:
        return {"media_counts": dict(self.media_counts), "audio_seconds": self.audio_seconds,
                "prompt_tokens": self.prompt_tokens, "reference": self.reference,
                "fields": {k: v for k, v in self.fields.items() if isinstance(v, (str, int, float, bool))}}


def _bucket(value: float, edges: list[float], unit: str = "") -> str:
    """``[a, b)`` buckets between sorted edges: ``<a``, ``a-b``, …, ``>=z``."""
    if value < edges[0]:
        return f"<{edges[0]:g}{unit}"
    for lo, hi in zip(edges, edges[1:]):
        if lo <= value < hi:
            return f"{lo:g}-{hi:g}{unit}"
    return f">={edges[-1]:g}{unit}"


def slice_label(cfg: SliceConfig, meta: ItemMeta) -> str:
    by = cfg.by
    if by == "modality":
        kinds = sorted(k for k, n in meta.media_counts.items() if n)
        return "+".join(kinds) if kinds else "text"
    if by in ("num_images", "num_audio"):
        n = meta.media_counts.get("image" if by == "num_images" else "audio", 0)
        return f"{cfg.max_count}+" if n > cfg.max_count else str(n)
    if by == "audio_seconds":
        return "none" if meta.audio_seconds is None else _bucket(meta.audio_seconds, cfg.edges, "s")
    if by == "prompt_tokens":
        return _bucket(meta.prompt_tokens, cfg.edges)
    if by == "answer_type":
        return answer_type(meta.reference)
    if by.startswith("field:"):
        value = meta.fields.get(by[6:])
        return "missing" if value is None else str(value).replace("/", "_").replace("=", "_")
    raise ValueError(f"unknown slice kind {by!r}")  # config validation makes this unreachable


def partition(cfg: SliceConfig, items: Iterable[tuple[str, ItemMeta]]) -> dict[str, list[str]]:
    """Bucket label → ids of its items (every id lands in exactly one bucket)."""
    buckets: dict[str, list[str]] = {}
    for item_id, meta in items:
        buckets.setdefault(slice_label(cfg, meta), []).append(item_id)
    return dict(sorted(buckets.items()))

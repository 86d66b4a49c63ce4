"""What the planner knows of a sample before loading it: text tokens and, per modality, the LLM
tokens of each image / clip (:class:`SampleMeta`), read from a parsed record and the model's
modality specs. No media file is decoded; an audio clip's length comes from the record's metadata
or, failing that, from a caller-supplied header reader.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

# (path as written in the record, sampling rate) → the clip's length in samples at that rate
AudioLength = Callable[[str, int], int]


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
                            template_tokens_per_turn: int = 4,
                            audio_length: AudioLength | None = None) -> SampleMeta:
    """SampleMeta of a parsed :class:`amylum.data.records.Record`, using the modality specs'
    ``num_tokens``; no media file is opened.

    ``specs`` is ``{modality name: ImageInputSpec | AudioInputSpec | TensorInputSpec}`` (the
    processor's). Audio length must be in the record's metadata, as ``audio_seconds`` or
    ``audio_num_samples`` (a number, or a list with one entry per clip); without them
    ``audio_length(path, sampling_rate)`` is asked (e.g. a sound-file header reader), and without
    that the record is an error.
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
            lengths = _audio_num_samples(record, paths, spec.sampling_rate, audio_length)
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


def _audio_num_samples(record, paths: list[str], sampling_rate: int,
                       audio_length: AudioLength | None) -> list[int]:
    for key, scale in (("audio_num_samples", 1), ("audio_seconds", sampling_rate)):
        if key in record.extra:
            v = record.extra[key]
            vals = v if isinstance(v, list) else [v]
            if len(vals) != len(paths):
                raise ValueError(f"record {record.id}: {key} has {len(vals)} entries for {len(paths)} audio clips")
            return [max(1, int(round(float(x) * scale))) for x in vals]
    if audio_length is not None:
        return [max(1, int(audio_length(p, sampling_rate))) for p in paths]
    raise ValueError(f"record {record.id}: audio length is unknown before loading; add 'audio_seconds' "
                     f"or 'audio_num_samples' to the record (one number per clip)")

"""Record → :class:`ProcessedSample` → (via :func:`collate`) :class:`MultimodalBatch`.

Each placeholder in a user turn expands to exactly ``spec.num_tokens(...)`` copies of the
placeholder token, the count the encoder + projector will produce (computed from configs).
Labels are ``-100`` everywhere except assistant replies and their ``<eos>``.

Checks run cheapest first (structure, modality keys, placeholder counts, then media files,
then length), so ``on_error="skip"`` does not load media of records that fail early.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import torch

from amylum.data.audio import AudioFeaturizer, load_audio
from amylum.data.batch import IGNORE_INDEX, TEXT_KIND, MultimodalBatch
from amylum.data.chat import REPLY, ChatTemplate
from amylum.data.collate import collate
from amylum.data.errors import (
    EMPTY_CONVERSATION,
    MISSING_FILE,
    PLACEHOLDER_MISMATCH,
    TOO_LONG,
    UNKNOWN_MODALITY,
    UNREADABLE_FILE,
    DataError,
    OnError,
    SkipCounter,
    check_on_error,
    logger,
)
from amylum.data.image import load_pixels
from amylum.data.records import Record, parse_record
from amylum.data.sample import ProcessedSample
from amylum.data.specs import spec_family
from amylum.data.tokenizer import single_token_id

if TYPE_CHECKING:
    from amylum.data.specs import Spec

Mode = Literal["train", "generate"]

# Placeholders of kinds a model may lack an encoder for; seeing one in text without an
# encoder is an "unknown modality" error rather than literal text.
_WELL_KNOWN_PLACEHOLDERS = {"<image>": "image", "<audio>": "audio", "<video>": "video"}


class MultimodalProcessor:
    """Turns records into samples for a model with the given ``modality_specs``.

    Args:
        tokenizer: any HF tokenizer; a spec's placeholder token id is used where the tokenizer has
            it as one token, else the pad id (the model locates modality tokens by ``kinds``).
        modality_specs: ``model.modality_specs()``; its order defines ``kinds`` (i ↔ i + 1).
        max_length: longest allowed sample in tokens; longer samples are errors, never truncated.
        mode: ``"train"`` (labels on replies) or ``"generate"`` (last reply held out as
            ``sample.reference``, prompt ends with the assistant marker, no labels).
        on_error: ``"raise"`` or ``"skip"`` (``__call__`` returns None; see ``skipped``).
        media_root: folder that relative media paths are resolved against.

    Records map to modalities by kind: ``image``/``images`` → the spec of kind ``"image"``,
    ``audio``/``audios`` → kind ``"audio"``; a :class:`TensorInputSpec` modality reads the
    record key named like the modality (paths to ``.npy`` or ``.pt`` files).
    """

    def __init__(
        self,
        tokenizer,
        modality_specs: Mapping[str, Spec],
        max_length: int,
        mode: Mode = "train",
        on_error: OnError = "raise",
        template: ChatTemplate | None = None,
        media_root: str | Path | None = None,
    ):
        if mode not in ("train", "generate"):
            raise ValueError(f"mode must be 'train' or 'generate', got {mode!r}")
        if max_length < 2:
            raise ValueError(f"max_length must be at least 2, got {max_length}")
        self.tokenizer = tokenizer
        self.specs = dict(modality_specs)
        self.modalities: tuple[str, ...] = tuple(self.specs)
        self.max_length = int(max_length)
        self.mode: Mode = mode
        self.on_error = check_on_error(on_error)
        self.template = template or ChatTemplate()
        self.media_root = Path(media_root) if media_root is not None else None
        self.skipped = SkipCounter()

        self.pad_token_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        if tokenizer.eos_token_id is None:
            raise ValueError("the tokenizer has no eos token; replies need one to end")
        if self.pad_token_id is None:
            raise ValueError("the tokenizer has neither a pad nor an eos token")
        self.bos_token_id = tokenizer.bos_token_id
        self.eos_token_id = int(tokenizer.eos_token_id)

        self._placeholder_ids: dict[str, int] = {}
        self._key_to_name: dict[str, str] = {}  # record media kind / key → modality name
        self._featurizers: dict[str, AudioFeaturizer] = {}
        self._families: dict[str, str] = {}
        for name, spec in self.specs.items():
            # Modality positions are found by ``kinds``, never by id, and the model overwrites their
            # embeddings; so a tokenizer without the placeholder token (most HF LLMs) still works:
            # its positions just hold the pad id.
            tid = single_token_id(tokenizer, spec.placeholder)
            if tid is None:
                logger.info("placeholder %r is not a token of the tokenizer; its positions use the pad id %d",
                            spec.placeholder, self.pad_token_id)
            self._placeholder_ids[name] = self.pad_token_id if tid is None else tid
            family = spec_family(spec)
            self._families[name] = family
            key = name if family == "tensor" else spec.kind
            if key in self._key_to_name:
                raise ValueError(
                    f"modalities {self._key_to_name[key]!r} and {name!r} both read record key {key!r}; "
                    "records cannot say which encoder an item is for"
                )
            self._key_to_name[key] = name
            if family == "audio":
                self._featurizers[name] = AudioFeaturizer(spec)
        placeholders = [s.placeholder for s in self.specs.values()]
        if len(set(placeholders)) != len(placeholders):
            raise ValueError(f"modality placeholders must be distinct, got {placeholders}")
        self._unknown_placeholders = {p: k for p, k in _WELL_KNOWN_PLACEHOLDERS.items() if p not in placeholders}
        all_ph = placeholders + list(self._unknown_placeholders)
        self._placeholder_re = re.compile("(" + "|".join(re.escape(p) for p in all_ph) + ")")
        self._name_of_placeholder = {s.placeholder: n for n, s in self.specs.items()}

    # ------------------------------------------------------------------ public

    def __call__(self, record: Record | dict, media_root: str | Path | None = None) -> ProcessedSample | None:
        """Process one record; with ``on_error="skip"`` a bad record returns None and is counted."""
        try:
            return self.process(record, media_root)
        except DataError as e:
            if self.on_error == "raise":
                raise
            self.skipped.add(e)
            return None

    def process(self, record: Record | dict, media_root: str | Path | None = None) -> ProcessedSample:
        """Process one record; always raises :class:`DataError` on bad input."""
        if not isinstance(record, Record):
            record = parse_record(record)
        root = Path(media_root) if media_root is not None else self.media_root
        if self.mode == "generate" and record.turns[-1].role != "assistant":
            raise DataError(record.id, "generation needs the conversation to end with the assistant reply "
                            "to predict (the reference answer)", EMPTY_CONVERSATION)
        items = self._media_items(record)
        pieces = self.template.pieces(record.turns, generation=self.mode == "generate")
        self._check_placeholders(record, pieces, items)
        encoder_inputs, item_tokens, stats = self._load_items(record, items, root)
        sample = self._tokenize(record, pieces, item_tokens)
        if len(sample) > self.max_length:
            raise DataError(
                record.id, f"sample is {len(sample)} tokens, longer than max_length={self.max_length} "
                f"(modality tokens: {sum(sum(v) for v in item_tokens.values())}); it is not truncated", TOO_LONG
            )
        sample.encoder_inputs = encoder_inputs
        sample.stats = stats
        if self.mode == "generate":
            sample.reference = record.turns[-1].text
        sample.extra = dict(record.extra)
        return sample

    def collate(
        self,
        samples: Sequence[ProcessedSample],
        pack: bool = False,
        max_length: int | None = None,
        padding_side: Literal["right", "left"] = "right",
    ) -> MultimodalBatch:
        """Pad (one sample per row) or greedily pack samples into rows of ``max_length`` tokens."""
        return collate(
            samples,
            self.modalities,
            self.pad_token_id,
            pack=pack,
            max_length=max_length or self.max_length,
            padding_side=padding_side,
        )

    def decode(self, ids: Sequence[int] | torch.Tensor) -> str:
        """Generated ids → text, stopping at the first ``<eos>``."""
        ids = [int(i) for i in ids]
        if self.eos_token_id in ids:
            ids = ids[: ids.index(self.eos_token_id)]
        return self.tokenizer.decode(ids, skip_special_tokens=True).strip()

    # ------------------------------------------------------------------ steps

    def _media_items(self, record: Record) -> dict[str, list[Any]]:
        """Modality name → the record's items for it; unknown media kinds are errors."""
        items: dict[str, list[Any]] = {}
        for kind, paths in record.media.items():
            name = self._key_to_name.get(kind)
            if name is None:
                raise DataError(record.id, f"has {kind} items but the model has no {kind} encoder "
                                f"({self._describe_modalities()})", UNKNOWN_MODALITY)
            items[name] = paths
        for key, value in record.extra.items():
            name = self._key_to_name.get(key)
            if name is not None and self._families[name] == "tensor":
                items[name] = [value] if isinstance(value, str) else list(value)
        return items

    def _check_placeholders(self, record: Record, pieces: list[tuple[str, str]], items: dict[str, list]) -> None:
        counts = dict.fromkeys(self.modalities, 0)
        for text, role in pieces:
            for ph in self._placeholder_re.findall(text):
                if ph in self._unknown_placeholders:
                    kind = self._unknown_placeholders[ph]
                    raise DataError(record.id, f"text has {ph} but the model has no {kind} encoder "
                                    f"({self._describe_modalities()})", UNKNOWN_MODALITY)
                if role == REPLY:
                    raise DataError(record.id, f"assistant reply contains {ph}; media may appear only in "
                                    "user or system turns", PLACEHOLDER_MISMATCH)
                counts[self._name_of_placeholder[ph]] += 1
        for name in self.modalities:
            n_items = len(items.get(name, ()))
            if counts[name] != n_items:
                ph = self.specs[name].placeholder
                raise DataError(record.id, f"{counts[name]} {ph} placeholder(s) in the text but {n_items} {name} "
                                f"item(s) in the record", PLACEHOLDER_MISMATCH)

    def _load_items(self, record: Record, items: dict[str, list], root: Path | None):
        encoder_inputs: dict[str, dict[str, torch.Tensor]] = {}
        item_tokens: dict[str, list[int]] = {}
        stats: dict[str, float] = {}
        for name, paths in items.items():
            if not paths:
                continue
            spec = self.specs[name]
            tensors, tokens = [], []
            for p in paths:
                path = _resolve(p, root)
                if self._families[name] == "image":
                    tensors.append(load_pixels(path, spec, record.id))
                    tokens.append(spec.num_tokens())
                elif self._families[name] == "audio":
                    wav = load_audio(path, spec.sampling_rate, record.id)
                    tensors.append(self._featurizers[name](wav, record.id))
                    tokens.append(spec.num_tokens(wav.shape[0]))
                    stats["audio_seconds"] = stats.get("audio_seconds", 0.0) + wav.shape[0] / spec.sampling_rate
                else:
                    tensors.append(_load_tensor(path, record.id))
                    tokens.append(spec.num_tokens())
            try:
                stacked = torch.stack(tensors)
            except RuntimeError:
                shapes = [tuple(t.shape) for t in tensors]
                raise DataError(record.id, f"{name} items have different shapes {shapes}") from None
            encoder_inputs[name] = {spec.input_name: stacked}
            item_tokens[name] = tokens
            stats[f"{name}_items"] = float(len(tokens))
        return encoder_inputs, item_tokens, stats

    def _tokenize(self, record: Record, pieces: list[tuple[str, str]], item_tokens: dict[str, list[int]]):
        ids: list[int] = []
        labels: list[int] = []
        segs: list[int] = []
        kinds: list[int] = []
        next_item = dict.fromkeys(self.modalities, 0)
        segment = 0

        def add_text(text: str, train: bool) -> None:
            if not text:
                return
            # split_special_tokens: a literal "<eos>" typed in a record is text, not a control token.
            toks = self.tokenizer(text, add_special_tokens=False, split_special_tokens=True)["input_ids"]
            ids.extend(toks)
            labels.extend(toks if train else [IGNORE_INDEX] * len(toks))
            segs.extend([-1] * len(toks))
            kinds.extend([TEXT_KIND] * len(toks))

        if self.bos_token_id is not None:
            ids.append(int(self.bos_token_id))
            labels.append(IGNORE_INDEX)
            segs.append(-1)
            kinds.append(TEXT_KIND)
        for text, role in pieces:
            if role == REPLY:
                add_text(text, train=True)
                ids.append(self.eos_token_id)
                labels.append(self.eos_token_id)
                segs.append(-1)
                kinds.append(TEXT_KIND)
                continue
            for part in self._placeholder_re.split(text):
                name = self._name_of_placeholder.get(part)
                if name is None:
                    add_text(part, train=False)
                    continue
                n = item_tokens[name][next_item[name]]
                next_item[name] += 1
                ids.extend([self._placeholder_ids[name]] * n)
                labels.extend([IGNORE_INDEX] * n)
                segs.extend([segment] * n)
                kinds.extend([self.modalities.index(name) + 1] * n)
                segment += 1
        if labels:
            labels[0] = IGNORE_INDEX  # nothing predicts a sample's first token (batch.py convention)
        if self.mode == "generate":
            labels = [IGNORE_INDEX] * len(ids)
        t = lambda xs: torch.tensor(xs, dtype=torch.long)  # noqa: E731
        return ProcessedSample(
            record_id=record.id,
            input_ids=t(ids),
            labels=t(labels),
            position_ids=torch.arange(len(ids), dtype=torch.long),
            segment_ids=t(segs),
            kinds=t(kinds),
            item_tokens=dict(item_tokens),
        )

    def _describe_modalities(self) -> str:
        if not self.specs:
            return "it is text-only"
        return "it has: " + ", ".join(f"{n} ({s.kind})" for n, s in self.specs.items())


def _resolve(path: str, root: Path | None) -> Path:
    p = Path(path)
    return p if p.is_absolute() or root is None else root / p


def _load_tensor(path: Path, record_id: str) -> torch.Tensor:
    if not path.is_file():
        raise DataError(record_id, f"input file {str(path)!r} does not exist", MISSING_FILE)
    try:
        if path.suffix == ".npy":
            return torch.from_numpy(np.load(path, allow_pickle=False))
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # numpy/torch raise many types for bad files; all mean "unreadable"
        raise DataError(record_id, f"input file {str(path)!r} cannot be read: {e}", UNREADABLE_FILE) from None


__all__ = ["MultimodalProcessor", "ProcessedSample"]

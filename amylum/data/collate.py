"""Processed samples → one :class:`MultimodalBatch`, padded or packed.

Padding puts one sample per row. Packing places samples greedily (first fit, in order) into
rows of at most ``max_length`` tokens; positions restart at 0 for every sample, ``sample_ids``
tell the samples of a row apart and segment ids are renumbered to be unique within a row.
Encoder items are concatenated row-major, i.e. in the order their tokens appear.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch

from amylum.data.batch import IGNORE_INDEX, TEXT_KIND, MultimodalBatch
from amylum.data.errors import TOO_LONG, DataError
from amylum.data.sample import ProcessedSample


def pack_rows(lengths: Sequence[int], max_length: int) -> list[list[int]]:
    """First-fit: sample indices per row, each row's lengths summing to at most ``max_length``."""
    rows: list[list[int]] = []
    room: list[int] = []
    for i, n in enumerate(lengths):
        for r, free in enumerate(room):
            if n <= free:
                rows[r].append(i)
                room[r] -= n
                break
        else:
            rows.append([i])
            room.append(max_length - n)
    return rows


def collate(
    samples: Sequence[ProcessedSample],
    modalities: Sequence[str],
    pad_token_id: int,
    pack: bool = False,
    max_length: int | None = None,
    padding_side: Literal["right", "left"] = "right",
) -> MultimodalBatch:
    """Collate samples; rows are padded to the longest row of the batch.

    ``encoder_inputs`` holds only modalities with at least one item in the batch (the model
    runs a dummy input for the others); ``item_tokens`` / ``item_records`` list every modality.
    """
    if not samples:
        raise ValueError("cannot collate an empty list of samples")
    if padding_side not in ("right", "left"):
        raise ValueError(f"padding_side must be 'right' or 'left', got {padding_side!r}")
    if pack and max_length is None:
        raise ValueError("packing needs max_length (the row size)")
    if pack and padding_side == "left":
        raise ValueError("packed rows are right-padded; left padding is for generation batches")
    for s in samples:
        if max_length is not None and len(s) > max_length:
            raise DataError(s.record_id, f"sample is {len(s)} tokens, longer than max_length={max_length}", TOO_LONG)

    rows = pack_rows([len(s) for s in samples], max_length) if pack else [[i] for i in range(len(samples))]
    width = max(sum(len(samples[i]) for i in row) for row in rows)
    shape = (len(rows), width)
    input_ids = torch.full(shape, pad_token_id, dtype=torch.long)
    labels = torch.full(shape, IGNORE_INDEX, dtype=torch.long)
    position_ids = torch.zeros(shape, dtype=torch.long)
    sample_ids = torch.full(shape, -1, dtype=torch.long)
    segment_ids = torch.full(shape, -1, dtype=torch.long)
    kinds = torch.full(shape, TEXT_KIND, dtype=torch.long)

    enc: dict[str, dict[str, list[torch.Tensor]]] = {}
    item_tokens: dict[str, list[int]] = {m: [] for m in modalities}
    item_records: dict[str, list[str]] = {m: [] for m in modalities}
    records: list[list[str]] = []
    stats: dict[str, float] = {"samples": float(len(samples))}

    for r, row in enumerate(rows):
        row_len = sum(len(samples[i]) for i in row)
        start = width - row_len if padding_side == "left" else 0
        seg_offset = 0
        records.append([])
        for k, i in enumerate(row):
            s = samples[i]
            end = start + len(s)
            input_ids[r, start:end] = s.input_ids
            labels[r, start:end] = s.labels
            position_ids[r, start:end] = s.position_ids
            sample_ids[r, start:end] = k
            segment_ids[r, start:end] = torch.where(s.segment_ids >= 0, s.segment_ids + seg_offset, s.segment_ids)
            kinds[r, start:end] = s.kinds
            seg_offset += s.num_segments
            start = end
            records[-1].append(s.record_id)
            for m in modalities:
                toks = s.item_tokens.get(m, [])
                if not toks:
                    continue
                item_tokens[m].extend(toks)
                item_records[m].extend([s.record_id] * len(toks))
                for name, t in s.encoder_inputs[m].items():
                    enc.setdefault(m, {}).setdefault(name, []).append(t)
            for key, v in s.stats.items():
                stats[key] = stats.get(key, 0.0) + v

    unknown = {m for s in samples for m in s.item_tokens if s.item_tokens[m]} - set(modalities)
    if unknown:
        raise ValueError(f"samples have items for {sorted(unknown)} but the batch modalities are {list(modalities)}")
    encoder_inputs = {m: {name: torch.cat(ts) for name, ts in d.items()} for m, d in enc.items()}
    batch = MultimodalBatch(
        input_ids=input_ids,
        labels=labels,
        position_ids=position_ids,
        sample_ids=sample_ids,
        segment_ids=segment_ids,
        kinds=kinds,
        modalities=tuple(modalities),
        encoder_inputs=encoder_inputs,
        item_tokens=item_tokens,
        item_records=item_records,
        records=records,
        stats=stats,
    )
    stats["tokens"] = float(batch.num_tokens)
    return batch

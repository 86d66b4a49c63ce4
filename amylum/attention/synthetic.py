"""Synthetic token layouts (sample / segment ids) for benchmarks and kernel checks.

Not data loading: these only place images / clips of given sizes in text so that mask shapes
resemble real batches (one long sample with images, or a packed row of several samples).
"""

from __future__ import annotations

from types import SimpleNamespace

import torch


def _layout(seq: int, samples: list[tuple[int, int]], image_tokens: int):
    """``samples``: (length, images) per sample, placed left to right; the rest of the row is padding."""
    sample_ids = torch.full((seq,), -1, dtype=torch.long)
    segment_ids = torch.full((seq,), -1, dtype=torch.long)
    kinds = torch.zeros(seq, dtype=torch.long)
    position_ids = torch.zeros(seq, dtype=torch.long)
    pos, segment = 0, 0
    for sid, (length, images) in enumerate(samples):
        if pos + length > seq or images * image_tokens > length:
            raise ValueError(f"sample {sid} ({length} tokens, {images} images) does not fit the row of {seq}")
        sample_ids[pos : pos + length] = sid
        position_ids[pos : pos + length] = torch.arange(length)
        gap = (length - images * image_tokens) // (images + 1)  # text before, between and after images
        at = pos + gap
        for _ in range(images):
            segment_ids[at : at + image_tokens] = segment
            kinds[at : at + image_tokens] = 1
            segment += 1
            at += image_tokens + gap
        pos += length
    return sample_ids, segment_ids, kinds, position_ids


def multimodal_batch(seq: int, samples: list[tuple[int, int]], image_tokens: int = 1024, batch: int = 1):
    """A batch-like object (B rows with the same layout) with sample_ids, segment_ids, kinds, position_ids."""
    rows = _layout(seq, samples, image_tokens)
    sample_ids, segment_ids, kinds, position_ids = (t.expand(batch, seq).clone() for t in rows)
    return SimpleNamespace(sample_ids=sample_ids, segment_ids=segment_ids, kinds=kinds, position_ids=position_ids)


def random_multimodal_batch(generator: torch.Generator, batch: int, seq: int, max_segment: int):
    """Random rows: packed samples with random segments, optional left / right padding."""

    def rand(lo, hi):
        return int(torch.randint(lo, hi + 1, (1,), generator=generator))

    sample_ids = torch.full((batch, seq), -1, dtype=torch.long)
    segment_ids = torch.full((batch, seq), -1, dtype=torch.long)
    position_ids = torch.zeros((batch, seq), dtype=torch.long)
    for b in range(batch):
        pos, sample, segment = rand(0, 3), 0, 0
        while pos < seq:
            length = min(rand(1, seq), seq - pos)
            if sample and rand(0, 5) == 0:
                break  # right padding
            sample_ids[b, pos : pos + length] = sample
            position_ids[b, pos : pos + length] = torch.arange(length)
            i = pos
            while i < pos + length:
                if rand(0, 2) == 0:
                    n = min(rand(1, max_segment), pos + length - i)
                    segment_ids[b, i : i + n] = segment
                    segment, i = segment + 1, i + n
                else:
                    i += rand(1, max(1, max_segment // 2))
            pos, sample = pos + length, sample + 1
    return SimpleNamespace(sample_ids=sample_ids, segment_ids=segment_ids, position_ids=position_ids)

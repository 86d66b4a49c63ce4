"""Shared helpers for the attention tests: tiny random packed multimodal batches."""

from __future__ import annotations

from types import SimpleNamespace

import torch


def naive_mask(sample_ids: torch.Tensor, segment_ids: torch.Tensor, mode: str = "multimodal") -> torch.Tensor:
    """DESIGN §5 read literally, one element at a time (tests only)."""
    B, S = sample_ids.shape
    out = torch.zeros(B, S, S, dtype=torch.bool)
    for b in range(B):
        for q in range(S):
            for k in range(S):
                sq, sk = int(sample_ids[b, q]), int(sample_ids[b, k])
                if sq < 0:
                    out[b, q, k] = q == k  # padding attends itself only
                    continue
                same_segment = mode == "multimodal" and int(segment_ids[b, q]) >= 0 and (
                    int(segment_ids[b, q]) == int(segment_ids[b, k])
                )
                out[b, q, k] = sq == sk and (k <= q or same_segment)
    return out


def random_batch(generator: torch.Generator, batch: int, seq: int, max_segment: int = 6, kinds: int = 2):
    """Rows of packed samples (text with images/clips inside) followed by padding."""
    sample_ids = torch.full((batch, seq), -1, dtype=torch.long)
    segment_ids = torch.full((batch, seq), -1, dtype=torch.long)
    kind = torch.zeros((batch, seq), dtype=torch.long)
    position_ids = torch.zeros((batch, seq), dtype=torch.long)

    def rand(lo, hi):
        return int(torch.randint(lo, hi + 1, (1,), generator=generator))

    for b in range(batch):
        pos, sample, segment = rand(0, 2), 0, 0  # optional left padding
        while pos < seq:
            length = min(rand(1, max(1, seq // 2)), seq - pos)
            if rand(0, 4) == 0 and pos > 0:
                break  # right padding for the rest of the row
            sample_ids[b, pos : pos + length] = sample
            position_ids[b, pos : pos + length] = torch.arange(length)
            i = pos
            while i < pos + length:
                if rand(0, 2) == 0:
                    n = min(rand(1, max_segment), pos + length - i)
                    segment_ids[b, i : i + n] = segment
                    kind[b, i : i + n] = rand(1, kinds)
                    segment += 1
                    i += n
                else:
                    i += rand(1, 3)
            pos += length
            sample += 1
    return SimpleNamespace(sample_ids=sample_ids, segment_ids=segment_ids, kinds=kind, position_ids=position_ids)

"""Dense boolean masks: the reference every other representation is tested against.

``dense_mask`` evaluates the DESIGN §5 predicate element-wise from the per-token ids (it does
not use the interval form of :mod:`amylum.attention.mask`, so tests comparing the two check
that derivation). O(B·S²) memory: CPU, tests and small sizes only.
"""

from __future__ import annotations

import torch

from .mask import MODES, MaskSpec, _tensors


def dense_mask(batch_or_tensors, mode: str = "multimodal") -> torch.Tensor:
    """(B, S, S) bool: ``[b, q, k]`` is True iff query ``q`` may attend key ``k``.

    Padding queries attend only themselves (so SDPA never sees an empty row).
    """
    if mode not in MODES:
        raise ValueError(f"unknown mask mode {mode!r}; expected one of {MODES}")
    sample_ids, segment_ids = _tensors(batch_or_tensors)
    S = sample_ids.shape[1]
    idx = torch.arange(S, device=sample_ids.device)
    valid_q = (sample_ids >= 0)[:, :, None]
    same_sample = (sample_ids[:, :, None] == sample_ids[:, None, :]) & valid_q
    allowed = idx[None, None, :] <= idx[None, :, None]  # k <= q
    if mode == "multimodal":
        seg_q = segment_ids[:, :, None]
        allowed = allowed | ((seg_q >= 0) & (seg_q == segment_ids[:, None, :]))
    allowed = same_sample & allowed
    pad_self = (~valid_q) & torch.eye(S, dtype=torch.bool, device=sample_ids.device)
    return allowed | pad_self


def dense_from_spec(spec: MaskSpec) -> torch.Tensor:
    """(B, S, S) bool from the interval form: ``lo[q] <= k <= hi[q]``."""
    k = torch.arange(spec.seq_len, device=spec.lo.device)
    return (k[None, None, :] >= spec.lo[:, :, None]) & (k[None, None, :] <= spec.hi[:, :, None])

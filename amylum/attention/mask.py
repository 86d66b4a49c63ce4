"""Mask specification: from per-token (sample id, segment id) to per-query key intervals.

Semantics (DESIGN §5): query ``q`` may attend key ``k`` iff both belong to the same sample
(padding belongs to none) and either ``k <= q`` or ``q`` and ``k`` lie in the same modality
segment. ``causal`` mode drops the segment clause (plain document-causal, as HF LLaVA).

Because a packed sample is one contiguous run of a row and every image / clip is one
contiguous run inside its sample, the keys a query may see always form ONE interval:

* text query ``q`` of a sample starting at ``a``:        ``[a, q]``
* query ``q`` of a segment ``[s, e)`` of that sample:      ``[a, e - 1]`` (``e - 1 >= q``)
* padding query ``q``:                                   ``[q, q]`` (itself only, so no
  softmax row is empty and nothing is NaN; padding outputs are ignored by the loss)

So the whole (S × S) mask is described by two (B, S) integer tensors ``lo`` / ``hi``: O(S)
memory. Every backend derives what it needs from them (a dense bool mask for the reference,
block tables for FlexAttention, sample and segment runs for the decomposed flash route).
The general per-element predicate lives in :mod:`amylum.attention.dense` and is the
reference the interval form is tested against.

Nothing here is cached across calls: a :class:`MaskSpec` is built per batch and travels
with it (DESIGN §4.3; Cornstarch's class-level cache returned stale masks).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from amylum.device_copy import to_device

MODES = ("multimodal", "causal")


@dataclass(frozen=True)
class MaskSpec:
    """The attention mask of one batch in O(S) form.

    ``lo[b, q]`` / ``hi[b, q]``: the inclusive key interval query ``q`` of row ``b`` may
    attend. ``sample_ids`` / ``segment_ids`` are kept for the backends that work on runs.
    """

    lo: torch.Tensor  # (B, S) int64
    hi: torch.Tensor  # (B, S) int64
    sample_ids: torch.Tensor  # (B, S) int64, -1 = padding
    segment_ids: torch.Tensor  # (B, S) int64, -1 = text / padding; all -1 in causal mode
    mode: str

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.lo.shape)  # type: ignore[return-value]

    @property
    def seq_len(self) -> int:
        return self.lo.shape[1]

    def to(self, device: torch.device | str, non_blocking: bool = False) -> "MaskSpec":
        tensors = (self.lo, self.hi, self.sample_ids, self.segment_ids)
        return MaskSpec(*(to_device(t, device, non_blocking) for t in tensors), self.mode)

    def allowed_count(self) -> torch.Tensor:
        """Allowed (query, key) pairs per row, padding excluded: the 'useful work' of a row."""
        valid = self.sample_ids >= 0
        return ((self.hi - self.lo + 1) * valid).sum(dim=1)


def _tensors(batch_or_tensors) -> tuple[torch.Tensor, torch.Tensor]:
    for name in ("sample_ids", "segment_ids"):
        if not hasattr(batch_or_tensors, name):
            raise TypeError(
                f"attention masks need an object with 'sample_ids' and 'segment_ids' (B, S) tensors "
                f"(a MultimodalBatch); {type(batch_or_tensors).__name__} has no '{name}'"
            )
    sample_ids = torch.as_tensor(batch_or_tensors.sample_ids)
    segment_ids = torch.as_tensor(batch_or_tensors.segment_ids)
    if sample_ids.dim() != 2 or sample_ids.shape != segment_ids.shape:
        raise ValueError(
            f"sample_ids and segment_ids must both be (batch, seq); got {tuple(sample_ids.shape)} "
            f"and {tuple(segment_ids.shape)}"
        )
    return sample_ids.long(), segment_ids.long()


def _run_starts(ids: torch.Tensor) -> torch.Tensor:
    """True where a new run of equal values begins (position 0 always starts one)."""
    starts = torch.ones_like(ids, dtype=torch.bool)
    starts[:, 1:] = ids[:, 1:] != ids[:, :-1]
    return starts


def _check_one_run_per_id(ids: torch.Tensor, what: str) -> None:
    """Every id >= 0 must occupy one contiguous run of its row (the interval form relies on it)."""
    starts = _run_starts(ids) & (ids >= 0)
    rows, cols = starts.nonzero(as_tuple=True)
    if rows.numel() < 2:
        return
    keys = rows * (int(ids.max()) + 1) + ids[rows, cols]
    sorted_keys = keys.sort().values
    dup = sorted_keys[1:] == sorted_keys[:-1]
    if bool(dup.any()):
        key = int(sorted_keys[1:][dup][0])
        row, value = divmod(key, int(ids.max()) + 1)
        raise ValueError(
            f"{what} {value} of row {row} is split into several runs; each packed sample and each "
            f"image/clip segment must be one contiguous run of tokens"
        )


def mask_spec(batch_or_tensors, mode: str = "multimodal", *, validate: bool = True) -> MaskSpec:
    """Build the O(S) :class:`MaskSpec` of a batch (vectorized; one host sync when validating)."""
    if mode not in MODES:
        raise ValueError(f"unknown mask mode {mode!r}; expected one of {MODES}")
    sample_ids, segment_ids = _tensors(batch_or_tensors)
    B, S = sample_ids.shape
    valid = sample_ids >= 0
    segment_ids = torch.where(valid, segment_ids, torch.full_like(segment_ids, -1))
    if mode == "causal":
        segment_ids = torch.full_like(segment_ids, -1)
    if validate:
        _check_one_run_per_id(sample_ids, "sample")
        _check_one_run_per_id(segment_ids, "segment")
        # A segment continuing across a sample boundary would be two segments of two samples.
        cont = torch.zeros_like(valid)
        cont[:, 1:] = (segment_ids[:, 1:] >= 0) & (segment_ids[:, 1:] == segment_ids[:, :-1])
        crossed = cont.clone()
        crossed[:, 1:] &= sample_ids[:, 1:] != sample_ids[:, :-1]
        if bool(crossed.any()):
            row, col = (int(x) for x in crossed.nonzero()[0])
            raise ValueError(f"segment at row {row}, position {col} crosses a sample boundary")

    idx = torch.arange(S, device=sample_ids.device).expand(B, S)
    # Start of the sample run each token belongs to.
    sample_start = torch.where(_run_starts(sample_ids), idx, torch.zeros_like(idx)).cummax(dim=1).values
    # Exclusive end of the segment run each token belongs to (smallest run end >= q).
    seg_end_flag = torch.ones_like(valid)
    seg_end_flag[:, :-1] = segment_ids[:, :-1] != segment_ids[:, 1:]
    ends = torch.where(seg_end_flag, idx + 1, torch.full_like(idx, S))
    seg_end = ends.flip(1).cummin(dim=1).values.flip(1)

    in_segment = segment_ids >= 0
    lo = torch.where(valid, sample_start, idx)
    hi = torch.where(in_segment, seg_end - 1, idx)
    return MaskSpec(lo=lo, hi=hi, sample_ids=sample_ids, segment_ids=segment_ids, mode=mode)

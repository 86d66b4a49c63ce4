"""The collated multimodal batch: the one contract between data, model, masks and runtime.

Everything that depends on a batch travels with it (DESIGN §4.3): the per-token segment
information that attention masks are built from, the encoder inputs, and the bookkeeping
needed for clear errors (which record an item came from) and throughput metrics.

Token layout conventions (B rows × S positions):

* ``sample_ids``  – which packed sample of the row a token belongs to (0, 1, 2, … within a
  row); ``-1`` marks padding. Padding never attends and is never attended to.
* ``segment_ids`` – ``-1`` for text and padding; every image / audio clip gets its own id,
  unique within its row (0, 1, 2, …), so two images never see each other's future tokens.
* ``kinds``       – ``0`` text (and padding); ``i + 1`` for tokens of modality
  ``modalities[i]``. The model scatters encoder features into the ``kinds == i + 1``
  positions in row-major order.
* ``position_ids`` restart at 0 for every sample of a packed row.
* ``labels`` are aligned with ``input_ids`` (the loss shifts them); ``-100`` on prompts,
  modality tokens and padding. The first token of every sample is ``-100`` so that no
  token is ever trained to predict the next sample of a packed row.

Encoder items (images, clips) are ordered row-major by the position of their placeholder;
``item_tokens[name][j]`` is how many feature tokens item ``j`` contributes and
``item_records[name][j]`` the id of the record it came from.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields

import torch

from amylum.device_copy import to_device

TEXT_KIND = 0
IGNORE_INDEX = -100


@dataclass
class BatchIndex:
    """Flat (row-major over B×S) positions derived from a batch on the host.

    Computed on the CPU before the batch moves to an accelerator, so the model can gather and
    scatter with ``index_select`` / ``index_copy`` and never waits on the device to find out
    where targets or modality tokens are (no host–device sync in the step).
    """

    target_positions: torch.Tensor  # positions p whose next token carries a label
    target_labels: torch.Tensor  # labels[p + 1] for those positions
    modality_positions: dict[str, torch.Tensor]  # positions of kinds == i + 1, per modality name
    # The (B, S) sample and segment ids, kept on the host when the batch moves: the attention
    # mask is built (and validated) from them on the CPU, with no device-to-host reads.
    host_sample_ids: torch.Tensor | None = None
    host_segment_ids: torch.Tensor | None = None
    # Device copies of the host-built attention mask specs (MaskSpec), by mask mode, kept by the
    # first forward that needs one (amylum.attention.integration): a batch used twice copies its
    # mask once, and a CUDA graph of the step reads them as static inputs (runtime/graph_step.py).
    mask_specs: dict = field(default_factory=dict)

    @classmethod
    def from_batch(cls, batch: "MultimodalBatch") -> "BatchIndex":
        b, s = batch.labels.shape
        shifted = batch.labels[:, 1:]
        rows, cols = (shifted != IGNORE_INDEX).nonzero(as_tuple=True)
        positions = {
            name: (batch.kinds.reshape(-1) == i + 1).nonzero().squeeze(1) for i, name in enumerate(batch.modalities)
        }
        return cls(target_positions=rows * s + cols, target_labels=shifted[rows, cols], modality_positions=positions,
                   host_sample_ids=batch.sample_ids, host_segment_ids=batch.segment_ids)

    def to(self, device, non_blocking: bool = False) -> "BatchIndex":
        move = lambda t: to_device(t, device, non_blocking)  # noqa: E731
        return BatchIndex(
            move(self.target_positions),
            move(self.target_labels),
            {k: move(v) for k, v in self.modality_positions.items()},
            self.host_sample_ids,
            self.host_segment_ids,
            {mode: spec.to(device, non_blocking) for mode, spec in self.mask_specs.items()},
        )


@dataclass
class MultimodalBatch:
    input_ids: torch.Tensor
    labels: torch.Tensor
    position_ids: torch.Tensor
    sample_ids: torch.Tensor
    segment_ids: torch.Tensor
    kinds: torch.Tensor
    modalities: tuple[str, ...] = ()
    encoder_inputs: dict[str, dict[str, torch.Tensor]] = field(default_factory=dict)
    item_tokens: dict[str, list[int]] = field(default_factory=dict)
    item_records: dict[str, list[str]] = field(default_factory=dict)
    # Record id of every sample: records[row][sample_index_in_row].
    records: list[list[str]] = field(default_factory=list)
    # Seconds of audio per sample etc. for throughput metrics: {"audio_seconds": 12.5}.
    stats: dict[str, float] = field(default_factory=dict)
    # Host-derived flat positions (see BatchIndex); filled in by ``to()`` from a CPU batch.
    index: BatchIndex | None = None

    _TENSOR_FIELDS = ("input_ids", "labels", "position_ids", "sample_ids", "segment_ids", "kinds")

    def __post_init__(self) -> None:
        shape = self.input_ids.shape
        if self.input_ids.dim() != 2:
            raise ValueError(f"input_ids must be (batch, seq), got shape {tuple(shape)}")
        for name in self._TENSOR_FIELDS:
            t = getattr(self, name)
            if t.shape != shape:
                raise ValueError(f"{name} has shape {tuple(t.shape)}, expected {tuple(shape)} like input_ids")
        unknown = set(self.encoder_inputs) - set(self.modalities)
        if unknown:
            raise ValueError(f"encoder inputs for {sorted(unknown)} but batch modalities are {list(self.modalities)}")

    @property
    def num_samples(self) -> int:
        return sum(len(r) for r in self.records) if self.records else int(
            sum(int(row.max().item()) + 1 for row in self.sample_ids if (row >= 0).any())
        )

    @property
    def num_tokens(self) -> int:
        """Non-padding tokens."""
        return int((self.sample_ids >= 0).sum().item())

    def num_items(self, modality: str) -> int:
        return len(self.item_tokens.get(modality, ()))

    def items_per_row(self, modality: str) -> list[int]:
        """How many items (images, clips) of ``modality`` each row holds (items are row-major)."""
        kind = self.modalities.index(modality) + 1
        counts = []
        for row_kinds, row_segments in zip(self.kinds, self.segment_ids):
            counts.append(int(torch.unique(row_segments[row_kinds == kind]).numel()))
        return counts

    def select_rows(self, rows: list[int]) -> "MultimodalBatch":
        """A batch of the given rows (in that order) with their encoder items and bookkeeping."""
        if not rows:
            raise ValueError("select_rows needs at least one row")
        index = torch.tensor(rows)
        tensors = {name: getattr(self, name)[index] for name in self._TENSOR_FIELDS}
        encoder_inputs, item_tokens, item_records = {}, {}, {}
        for modality in self.modalities:
            if not self.item_tokens.get(modality):
                continue
            counts = self.items_per_row(modality)
            starts = [sum(counts[:r]) for r in range(len(counts))]
            picked = [i for r in rows for i in range(starts[r], starts[r] + counts[r])]
            if not picked:
                continue
            item_index = torch.tensor(picked)
            encoder_inputs[modality] = {k: v[item_index] for k, v in self.encoder_inputs[modality].items()}
            item_tokens[modality] = [self.item_tokens[modality][i] for i in picked]
            item_records[modality] = [self.item_records[modality][i] for i in picked] if self.item_records.get(modality) else []
        return MultimodalBatch(
            **tensors,
            modalities=self.modalities,
            encoder_inputs=encoder_inputs,
            item_tokens=item_tokens,
            item_records={k: v for k, v in item_records.items() if v},
            records=[self.records[r] for r in rows] if self.records else [],
        )

    def with_index(self) -> "MultimodalBatch":
        """This batch with its ``BatchIndex`` computed (cheap on the CPU; done once per batch)."""
        if self.index is None:
            self.index = BatchIndex.from_batch(self)
        return self

    def to(self, device: torch.device | str, non_blocking: bool = False) -> "MultimodalBatch":
        """A copy with every tensor on ``device`` (floating encoder inputs keep their dtype).

        A CPU batch computes its ``BatchIndex`` first, so the copy arrives with host-derived
        positions and the model needs no device-to-host reads.
        """
        if self.index is None and self.input_ids.device.type == "cpu":
            self.with_index()
        moved = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, (torch.Tensor, BatchIndex)):
                value = value.to(device, non_blocking=non_blocking) if isinstance(value, BatchIndex) else to_device(
                    value, device, non_blocking
                )
            elif f.name == "encoder_inputs":
                value = {m: {k: to_device(v, device, non_blocking) for k, v in d.items()} for m, d in value.items()}
            moved[f.name] = value
        return MultimodalBatch(**moved)

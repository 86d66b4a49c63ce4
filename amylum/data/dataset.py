"""A records file + media folder as a torch Dataset, and a deterministic, resumable loader.

Records are parsed up front (small JSON), media are loaded lazily in ``__getitem__``.
The loader's order is a pure function of ``(seed, epoch)``, so a trainer that checkpoints
``loader.state_dict()`` → ``{"epoch", "index", "seed"}`` resumes on exactly the next batch.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from amylum.data.batch import MultimodalBatch
from amylum.data.errors import DataError, SkipCounter, logger
from amylum.data.processor import MultimodalProcessor
from amylum.data.records import load_records
from amylum.data.sample import ProcessedSample


class MultimodalDataset(torch.utils.data.Dataset):
    """Records from ``records_path``; media paths resolve against ``media_root``
    (default: the records file's folder). Uses the processor's ``on_error``: under ``"skip"``
    an invalid record is dropped at load time and one whose media fail returns ``None``
    (and is remembered, so it is counted once and not re-read every epoch).
    """

    def __init__(self, records_path: str | Path, processor: MultimodalProcessor, media_root: str | Path | None = None):
        self.path = Path(records_path)
        self.processor = processor
        self.media_root = Path(media_root) if media_root is not None else self.path.parent
        self._invalid = SkipCounter()
        self.records = load_records(self.path, processor.on_error, self._invalid)
        self._failed = SkipCounter()
        self._bad: set[int] = set()

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> ProcessedSample | None:
        if index in self._bad:
            return None
        try:
            return self.processor.process(self.records[index], self.media_root)
        except DataError as e:
            if self.processor.on_error == "raise":
                raise
            self._bad.add(index)
            self._failed.add(e)
            return None

    @property
    def skipped(self) -> SkipCounter:
        """Bad records skipped so far: invalid at load time plus failed on access (each counted once)."""
        total = SkipCounter()
        total.merge(self._invalid)
        total.merge(self._failed)
        return total

    @property
    def num_skipped(self) -> int:
        return self._invalid.count + self._failed.count


class ResumableLoader:
    """Seeded, shuffled batches of :class:`MultimodalBatch` with a checkpointable position.

    Iterating yields the rest of the current epoch, then moves to the next epoch. With
    ``world_size > 1`` every rank takes a strided, equal-length share of the epoch's order.
    Skipped (bad) records are consumed without filling a batch slot.
    """

    def __init__(
        self,
        dataset: MultimodalDataset,
        batch_size: int,
        seed: int = 0,
        shuffle: bool = True,
        pack: bool = False,
        max_length: int | None = None,
        drop_last: bool = False,
        rank: int = 0,
        world_size: int = 1,
    ):
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not in [0, {world_size})")
        self.dataset = dataset
        self.batch_size = batch_size
        self.seed = int(seed)
        self.shuffle = shuffle
        self.pack = pack
        self.max_length = max_length
        self.drop_last = drop_last
        self.rank = rank
        self.world_size = world_size
        self.epoch = 0
        self.index = 0  # positions of this rank's epoch order already consumed

    def order(self, epoch: int) -> np.ndarray:
        n = len(self.dataset)
        if self.shuffle:
            perm = np.random.default_rng([self.seed, epoch]).permutation(n)
        else:
            perm = np.arange(n)
        per_rank = n // self.world_size
        return perm[self.rank : per_rank * self.world_size : self.world_size]

    def __len__(self) -> int:
        """Batches per epoch (fewer if records get skipped)."""
        n = len(self.dataset) // self.world_size
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def __iter__(self) -> Iterator[MultimodalBatch]:
        order = self.order(self.epoch)
        pending: list[ProcessedSample] = []
        while self.index < len(order):
            sample = self.dataset[int(order[self.index])]
            self.index += 1
            if sample is not None:
                pending.append(sample)
            if len(pending) == self.batch_size:
                batch = self._collate(pending)
                pending = []
                yield batch  # index already points past this batch: a checkpoint here resumes after it
        if pending and not self.drop_last:
            yield self._collate(pending)
        if self.dataset.num_skipped:
            logger.info("epoch %d: %s", self.epoch, self.dataset.skipped.summary())
        self.epoch += 1
        self.index = 0

    def _collate(self, samples: list[ProcessedSample]) -> MultimodalBatch:
        return self.dataset.processor.collate(samples, pack=self.pack, max_length=self.max_length)

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "index": self.index, "seed": self.seed}

    def load_state_dict(self, state: dict[str, int]) -> None:
        missing = {"epoch", "index", "seed"} - set(state)
        if missing:
            raise ValueError(f"loader state lacks {sorted(missing)}: got {state}")
        self.epoch, self.index, self.seed = int(state["epoch"]), int(state["index"]), int(state["seed"])

"""The global batch of a step, as a pure function of the step: nothing to lose or repeat.

Samples are consumed in the order of ``ResumableLoader.order(epoch)`` (seeded permutation per
epoch), read as one endless stream of positions: position p is epoch p // n, entry p % n. Step s
takes positions [s·G, (s+1)·G) with G = global microbatches × microbatch size, whatever the
plan; a pipeline running microbatches [a, a+b) of the global batch takes positions
s·G + [a·m, (a+b)·m). A step that a failure interrupted is redone from the last completed step
with the same positions, and the re-planned split covers them exactly once.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Sample:
    position: int  # in the endless stream
    epoch: int
    index: int  # dataset index


class GlobalOrder:
    """Positions → dataset indices, with ``order_fn(epoch)`` (e.g. ``ResumableLoader.order``)."""

    def __init__(self, order_fn, dataset_size: int, microbatch_size: int, global_microbatches: int):
        if dataset_size < 1:
            raise ValueError("the dataset is empty")
        self._order_fn = order_fn
        self.n = dataset_size
        self.m = microbatch_size
        self.B = global_microbatches
        self._epochs: dict[int, np.ndarray] = {}  # per-instance, bounded by the run's epochs

    @property
    def global_batch(self) -> int:
        return self.m * self.B

    def _order(self, epoch: int) -> np.ndarray:
        if epoch not in self._epochs:
            order = np.asarray(self._order_fn(epoch))
            if len(order) != self.n:
                raise ValueError(f"epoch order has {len(order)} entries for a dataset of {self.n}")
            self._epochs = {epoch: order}  # keep only the current epoch
        return self._epochs[epoch]

    def sample(self, position: int) -> Sample:
        epoch, i = divmod(position, self.n)
        return Sample(position, epoch, int(self._order(epoch)[i]))

    def microbatches(self, step: int, first: int, count: int) -> list[list[Sample]]:
        """Microbatches [first, first + count) of the global batch of ``step`` (0-based)."""
        if first < 0 or count < 0 or first + count > self.B:
            raise ValueError(f"microbatches [{first}, {first + count}) outside the global batch of {self.B}")
        base = step * self.global_batch
        return [[self.sample(base + (first + k) * self.m + j) for j in range(self.m)] for k in range(count)]

    def step_positions(self, step: int) -> range:
        return range(step * self.global_batch, (step + 1) * self.global_batch)

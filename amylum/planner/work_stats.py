"""Batch-level statistics of per-sample work (Entrain's observation: the aggregate over a global
batch varies far less than single samples do, so one static plan fits every batch)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .work_model import WorkTable


@dataclass(frozen=True)
class BatchStats:
    """Coefficient of variation (std/mean) per component, per sample and per global batch."""

    components: tuple[str, ...]
    per_sample_cv: dict[str, float]
    per_batch_cv: dict[str, float]
    per_batch_mean: dict[str, float]  # mean work of a global batch
    global_batch: int
    batches: int

    def table(self) -> str:
        rows = [f"{'component':<10} {'CV/sample':>10} {'CV/batch':>9} {'ratio':>7}"]
        for c in self.components:
            s, b = self.per_sample_cv[c], self.per_batch_cv[c]
            ratio = s / b if b > 0 else float("inf")
            rows.append(f"{c:<10} {s:>10.3f} {b:>9.4f} {ratio:>6.1f}x")
        return "\n".join(rows)


def cv(x: np.ndarray, axis=None) -> np.ndarray | float:
    """std/mean; 0 where the mean is 0 (a component absent everywhere does not vary)."""
    x = np.asarray(x, dtype=np.float64)
    m = x.mean(axis=axis)
    s = x.std(axis=axis)
    return np.divide(s, m, out=np.zeros_like(np.asarray(s, dtype=np.float64)), where=np.asarray(m) > 0)


def batch_stats(table: WorkTable, global_batch: int, batches: int | None = None, seed: int = 0) -> BatchStats:
    """Statistics of work per global batch over a dataset (or ``batches`` random global batches).

    Global batches are consecutive chunks of one seeded permutation (what the sampler draws).
    """
    n = len(table)
    if global_batch < 1 or global_batch > n:
        raise ValueError(f"global_batch must be in [1, {n}], got {global_batch}")
    perm = np.random.default_rng(seed).permutation(n)
    k = n // global_batch if batches is None else min(batches, n // global_batch)
    if k < 2:
        raise ValueError(f"need at least two global batches of {global_batch} from {n} samples")
    idx = perm[: k * global_batch].reshape(k, global_batch)
    comps = (*table.modalities, "llm", "total")
    cols = np.column_stack([table.encoder, table.llm, table.total])
    sums = cols[idx].sum(axis=1)  # (k, components)
    return BatchStats(components=comps,
                      per_sample_cv={c: float(v) for c, v in zip(comps, cv(cols, axis=0))},
                      per_batch_cv={c: float(v) for c, v in zip(comps, cv(sums, axis=0))},
                      per_batch_mean={c: float(v) for c, v in zip(comps, sums.mean(axis=0))},
                      global_batch=global_batch, batches=k)

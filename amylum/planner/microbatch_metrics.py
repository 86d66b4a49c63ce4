"""Checks and balance metrics of a microbatch assignment (``assignment[replica][microbatch]`` =
positions into the global batch's work table)."""

from __future__ import annotations

import numpy as np

from .work_model import WorkTable
from .work_stats import cv

Assignment = list[list[np.ndarray]]


def check_assignment(assignment: Assignment, n: int, replicas: int | None = None,
                     microbatches: int | None = None) -> None:
    """Raise ValueError unless the assignment is a partition of range(n) of the expected shape."""
    if replicas is not None and len(assignment) != replicas:
        raise ValueError(f"assignment has {len(assignment)} replicas, expected {replicas}")
    counts = np.zeros(n, dtype=np.int64)
    for r, mbs in enumerate(assignment):
        if microbatches is not None and len(mbs) != microbatches:
            raise ValueError(f"replica {r} has {len(mbs)} microbatches, expected {microbatches}")
        for k, idx in enumerate(mbs):
            idx = np.asarray(idx, dtype=np.int64)
            if idx.size and (idx.min() < 0 or idx.max() >= n):
                raise ValueError(f"replica {r} microbatch {k} holds positions outside [0, {n})")
            np.add.at(counts, idx, 1)
    if (counts != 1).any():
        dup, miss = np.flatnonzero(counts > 1), np.flatnonzero(counts == 0)
        raise ValueError(f"not a partition of the global batch: {len(dup)} samples assigned more than once "
                         f"(e.g. {dup[:5].tolist()}), {len(miss)} never (e.g. {miss[:5].tolist()})")


def microbatch_loads(table: WorkTable, assignment: Assignment) -> np.ndarray:
    """(replicas, microbatches, K+1) work per microbatch: encoder columns then LLM."""
    m = table.matrix
    return np.array([[m[idx].sum(axis=0) for idx in mbs] for mbs in assignment])


def balance(table: WorkTable, assignment: Assignment) -> dict[str, float]:
    """CV across all microbatches of encoder work (all encoders summed, and per modality) and LLM
    work; also CV of per-replica totals."""
    loads = microbatch_loads(table, assignment)
    flat = loads.reshape(-1, loads.shape[-1])
    out = {"encoder": float(cv(flat[:, :-1].sum(axis=1))), "llm": float(cv(flat[:, -1]))}
    for j, mname in enumerate(table.modalities):
        out[f"encoder.{mname}"] = float(cv(flat[:, j]))
    rep = loads.sum(axis=1)
    out["replica.encoder"] = float(cv(rep[:, :-1].sum(axis=1)))
    out["replica.llm"] = float(cv(rep[:, -1]))
    return out


def profile_deviation(table: WorkTable, assignment: Assignment, profile: np.ndarray) -> dict[str, float]:
    """CV over all microbatches of load / target (encoder columns summed, and LLM), where microbatch
    k of a replica aims at ``profile[k]`` × the replica's mean: how closely a profile is met."""
    loads = microbatch_loads(table, assignment)  # (R, M, K+1)
    p = np.asarray(profile, dtype=np.float64)
    if p.ndim == 1:  # one share per microbatch for every column
        p = np.repeat(p[:, None], loads.shape[-1], axis=1)
    p = p / p.mean(axis=0)
    enc_l, llm_l = loads[..., :-1].sum(axis=-1), loads[..., -1]
    k = loads.shape[-1] - 1
    enc_w = loads[..., :-1].sum(axis=(0, 1))  # weight each encoder column's share by its work
    enc_p = (p[:, :k] * enc_w).sum(axis=1) / enc_w.sum() if k and enc_w.sum() > 0 else np.ones(len(p))
    mean = lambda x: x.mean(axis=1, keepdims=True)  # noqa: E731  (per replica)
    rel = lambda x, q: np.divide(x, mean(x) * q[None, :], out=np.ones_like(x), where=mean(x) > 0)  # noqa: E731
    return {"encoder": float(cv(rel(enc_l, enc_p).reshape(-1))), "llm": float(cv(rel(llm_l, p[:, -1]).reshape(-1)))}

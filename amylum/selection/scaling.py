"""Observational scaling law inside a cluster: log error = α + β · log r (model fixed, data varies).

Mordal fits once there are enough points (p) and the fit is good (mean squared residual in log
space below δ), then extrapolates to r = 1. Log-error becomes linear in log-data only after a
minimum amount of data, so ``fit_tail`` tries the longest *suffix* of the points (largest
fractions) that fits, never fewer than ``min_points``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np


@dataclass
class PowerLawFit:
    alpha: float
    beta: float
    loss: float  # mean squared residual of log(error)
    fractions: list[float]  # the points used
    errors: list[float]

    def predict(self, fraction: float = 1.0) -> float:
        return math.exp(self.alpha + self.beta * math.log(fraction))

    @property
    def points(self) -> int:
        return len(self.fractions)

    def to_dict(self) -> dict:
        return {"alpha": self.alpha, "beta": self.beta, "loss": self.loss, "points": self.points,
                "fractions": self.fractions, "predicted_full": self.predict(1.0)}


def fit_log_log(fractions: Sequence[float], errors: Sequence[float]) -> PowerLawFit:
    r = np.asarray(fractions, dtype=np.float64)
    e = np.asarray(errors, dtype=np.float64)
    if r.shape != e.shape or r.ndim != 1:
        raise ValueError("fractions and errors must be 1-D and of equal length")
    if len(r) < 2 or len(np.unique(r)) < 2:
        raise ValueError(f"a line needs at least 2 distinct fractions, got {list(r)}")
    if (r <= 0).any() or (e <= 0).any():
        raise ValueError("fractions and errors must be > 0 to take logs")
    x, y = np.log(r), np.log(e)
    beta, alpha = np.polyfit(x, y, 1)
    loss = float(np.mean((alpha + beta * x - y) ** 2))
    return PowerLawFit(float(alpha), float(beta), loss, [float(v) for v in r], [float(v) for v in e])


def fit_tail(
    fractions: Sequence[float], errors: Sequence[float], *, min_points: int = 3, max_loss: float = 5e-5
) -> tuple[PowerLawFit | None, PowerLawFit | None]:
    """(accepted fit or None, best-effort fit over all points or None if < 2 points).

    Accepted: the longest suffix of ≥ ``min_points`` points (by fraction) with loss ≤ ``max_loss``.
    """
    pts = sorted(zip(fractions, errors))
    best_effort = fit_log_log(*zip(*pts)) if len({p[0] for p in pts}) >= 2 else None
    for start in range(0, len(pts) - min_points + 1):
        fit = fit_log_log(*zip(*pts[start:]))
        if fit.loss <= max_loss:
            return fit, best_effort
    return None, best_effort

"""Centered kernel alignment (CKA) between two representations of the same n inputs.

CKA(K, L) = HSIC(K, L) / sqrt(HSIC(K, K) · HSIC(L, L)), K and L the Gram matrices. It compares
representations of different widths (a 64-wide and a 192-wide encoder), and it is invariant to
orthogonal transforms and isotropic scaling, so a near-linear projector does not change it.

Three ways to compute it:

- ``linear_cka(X, Y)``: exact, in feature space (never forms an n × n matrix): with centred
  columns, HSIC_lin ∝ ||YᵀX||²_F. ``unbiased=True`` uses the unbiased HSIC estimator on Grams.
- ``StreamingLinearCKA``: exact linear CKA accumulated over minibatches from running sums of
  XᵀX, YᵀY, YᵀX and column sums. Memory O(p·q), independent of n.
- ``MinibatchCKA``: Nguyen et al. (2021) — the average of per-minibatch *unbiased* HSICs
  (a biased per-batch HSIC would depend on the batch size). Works for any kernel; it estimates
  the same quantity as the full unbiased CKA.
"""

from __future__ import annotations

import torch


def _as2d(x: torch.Tensor, name: str) -> torch.Tensor:
    if x.dim() != 2:
        raise ValueError(f"{name} must be (n, features), got shape {tuple(x.shape)}")
    return x.to(torch.float64)  # float64: HSICs of wide features cancel a lot; float32 loses CKA(X,X)=1


def _check_pair(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    x, y = _as2d(x, "X"), _as2d(y, "Y")
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"X and Y must describe the same inputs: {x.shape[0]} vs {y.shape[0]} rows")
    return x, y


def gram_linear(x: torch.Tensor) -> torch.Tensor:
    x = _as2d(x, "X")
    return x @ x.T


def hsic(k: torch.Tensor, l: torch.Tensor, unbiased: bool = False) -> torch.Tensor:
    """HSIC of two n × n Gram matrices. Biased: tr(KHLH)/(n−1)²; unbiased: Song et al. (2012)."""
    n = k.shape[0]
    if k.shape != l.shape or k.shape != (n, n):
        raise ValueError(f"Gram matrices must both be n × n, got {tuple(k.shape)} and {tuple(l.shape)}")
    k, l = k.to(torch.float64), l.to(torch.float64)
    if not unbiased:
        h = torch.eye(n, dtype=k.dtype, device=k.device) - 1.0 / n
        return torch.trace(k @ h @ l @ h) / (n - 1) ** 2
    if n < 4:
        raise ValueError(f"the unbiased HSIC needs at least 4 inputs, got {n}")
    k = k - torch.diag(torch.diag(k))
    l = l - torch.diag(torch.diag(l))
    kl = k @ l
    ones = torch.ones(n, dtype=k.dtype, device=k.device)
    term = torch.trace(kl) + (ones @ k @ ones) * (ones @ l @ ones) / ((n - 1) * (n - 2)) - 2 * (ones @ kl @ ones) / (n - 2)
    return term / (n * (n - 3))


def cka_from_grams(k: torch.Tensor, l: torch.Tensor, unbiased: bool = False) -> float:
    denom = torch.sqrt(hsic(k, k, unbiased) * hsic(l, l, unbiased))
    if not float(denom) > 0:
        raise ValueError("CKA is undefined for a constant representation (zero self-HSIC)")
    return float(hsic(k, l, unbiased) / denom)


def linear_cka(x: torch.Tensor, y: torch.Tensor, unbiased: bool = False) -> float:
    """Linear CKA between X (n, p) and Y (n, q)."""
    x, y = _check_pair(x, y)
    if unbiased:
        return cka_from_grams(x @ x.T, y @ y.T, unbiased=True)
    x = x - x.mean(0, keepdim=True)
    y = y - y.mean(0, keepdim=True)
    xy = torch.linalg.matrix_norm(y.T @ x) ** 2
    xx = torch.linalg.matrix_norm(x.T @ x)
    yy = torch.linalg.matrix_norm(y.T @ y)
    if not float(xx * yy) > 0:
        raise ValueError("CKA is undefined for a constant representation (zero variance)")
    return float(xy / (xx * yy))


class StreamingLinearCKA:
    """Exact linear CKA over minibatches: ``update(x_batch, y_batch)`` then ``value()``.

    Centred cross-products follow from sums: XcᵀYc = XᵀY − (Σx)(Σy)ᵀ/n.
    """

    def __init__(self) -> None:
        self.n = 0
        self._sx = self._sy = self._xx = self._yy = self._xy = None

    def update(self, x: torch.Tensor, y: torch.Tensor) -> None:
        x, y = _check_pair(x, y)
        if self._sx is None:
            p, q = x.shape[1], y.shape[1]
            self._sx, self._sy = x.new_zeros(p), y.new_zeros(q)
            self._xx, self._yy, self._xy = x.new_zeros(p, p), y.new_zeros(q, q), x.new_zeros(q, p)
        self.n += x.shape[0]
        self._sx += x.sum(0)
        self._sy += y.sum(0)
        self._xx += x.T @ x
        self._yy += y.T @ y
        self._xy += y.T @ x

    def value(self) -> float:
        if self.n < 2:
            raise ValueError("CKA needs at least 2 inputs")
        n = self.n
        xx = self._xx - torch.outer(self._sx, self._sx) / n
        yy = self._yy - torch.outer(self._sy, self._sy) / n
        xy = self._xy - torch.outer(self._sy, self._sx) / n
        denom = torch.linalg.matrix_norm(xx) * torch.linalg.matrix_norm(yy)
        if not float(denom) > 0:
            raise ValueError("CKA is undefined for a constant representation (zero variance)")
        return float(torch.linalg.matrix_norm(xy) ** 2 / denom)


class MinibatchCKA:
    """Nguyen et al. (2021) minibatch CKA: mean unbiased HSICs over minibatches (≥ 4 inputs each)."""

    def __init__(self) -> None:
        self._kl = self._kk = self._ll = 0.0
        self.batches = 0

    def update(self, x: torch.Tensor, y: torch.Tensor) -> None:
        x, y = _check_pair(x, y)
        k, l = x @ x.T, y @ y.T
        self._kl += float(hsic(k, l, unbiased=True))
        self._kk += float(hsic(k, k, unbiased=True))
        self._ll += float(hsic(l, l, unbiased=True))
        self.batches += 1

    def value(self) -> float:
        if not self.batches:
            raise ValueError("no minibatch was added")
        if not self._kk * self._ll > 0:
            raise ValueError("CKA is undefined: a representation has non-positive self-HSIC")
        return self._kl / (self._kk * self._ll) ** 0.5


def pairwise_cka(
    features: dict[str, torch.Tensor], *, batch_size: int | None = None, unbiased: bool = False
) -> tuple[list[str], torch.Tensor]:
    """Names and the symmetric CKA matrix of every pair of representations of the same inputs.

    ``batch_size``: None = exact (streaming when biased); a number = Nguyen minibatch CKA with
    batches of that size (for data too large for one Gram matrix; needs ``unbiased``-style HSIC).
    """
    names = list(features)
    n = len(names)
    sim = torch.eye(n, dtype=torch.float64)
    for i in range(n):
        for j in range(i + 1, n):
            x, y = features[names[i]], features[names[j]]
            if batch_size is None:
                value = linear_cka(x, y, unbiased=unbiased)
            else:
                acc = MinibatchCKA()
                for start in range(0, x.shape[0], batch_size):
                    stop = min(x.shape[0], start + batch_size)
                    if stop - start >= 4:
                        acc.update(x[start:stop], y[start:stop])
                value = acc.value()
            sim[i, j] = sim[j, i] = value
    return names, sim

"""Projectors: map encoder features (N, T, H_enc) into the LLM's embedding space (N, T', H_llm).

Three kinds, chosen by name:

* ``linear`` – one Linear layer.
* ``mlp``    – Linear → GELU → Linear (LLaVA-1.5's projector).
* either of them with ``token_reduction = r > 1`` in front, trading tokens for speed:
  for image grids, ``r × r`` neighbourhoods are merged (``reduction_mode = "shuffle"``:
  concatenated, i.e. pixel-unshuffle, so no information is averaged away; ``"avg"``:
  averaged); for sequences (audio), ``r`` consecutive tokens are merged the same way.
"""

from __future__ import annotations

import math

import torch
from torch import nn

PROJECTOR_KINDS = ("linear", "mlp")
REDUCTION_MODES = ("shuffle", "avg")


class TokenReducer(nn.Module):
    """Merge neighbouring tokens: r×r patches of a square grid, or runs of r along a sequence."""

    def __init__(self, factor: int, mode: str, grid: bool) -> None:
        super().__init__()
        if factor < 1:
            raise ValueError(f"token_reduction must be >= 1, got {factor}")
        if mode not in REDUCTION_MODES:
            raise ValueError(f"reduction_mode must be one of {REDUCTION_MODES}, got {mode!r}")
        self.factor, self.mode, self.grid = factor, mode, grid

    def feature_multiplier(self) -> int:
        """How much wider a token gets (shuffle concatenates the merged tokens)."""
        if self.mode == "avg":
            return 1
        return self.factor * self.factor if self.grid else self.factor

    def token_divisor(self) -> int:
        return self.factor * self.factor if self.grid else self.factor

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        r = self.factor
        if r == 1:
            return x
        n, t, h = x.shape
        if self.grid:
            side = math.isqrt(t)
            if side * side != t or side % r:
                raise ValueError(f"token_reduction {r} needs a square token grid with side divisible by {r}; got {t} tokens")
            # (N, side, side, H) -> (N, side/r, r, side/r, r, H) -> group the r×r neighbours together
            x = x.view(n, side // r, r, side // r, r, h).permute(0, 1, 3, 2, 4, 5)
            x = x.reshape(n, (side // r) ** 2, r * r, h)
        else:
            if t % r:
                raise ValueError(f"token_reduction {r} does not divide the sequence of {t} tokens")
            x = x.view(n, t // r, r, h)
        return x.mean(dim=2) if self.mode == "avg" else x.flatten(2)


class Projector(nn.Module):
    """Optional token reduction followed by a linear or 2-layer MLP projection."""

    def __init__(
        self,
        kind: str,
        in_dim: int,
        out_dim: int,
        *,
        token_reduction: int = 1,
        reduction_mode: str = "shuffle",
        grid: bool = True,
        hidden_dim: int | None = None,
    ) -> None:
        super().__init__()
        if kind not in PROJECTOR_KINDS:
            raise ValueError(f"unknown projector kind {kind!r}; choose one of {PROJECTOR_KINDS}")
        self.kind, self.in_dim, self.out_dim = kind, in_dim, out_dim
        self.reducer = TokenReducer(token_reduction, reduction_mode, grid)
        width = in_dim * self.reducer.feature_multiplier()
        if kind == "linear":
            self.proj = nn.Linear(width, out_dim)
        else:
            hidden = hidden_dim or out_dim
            self.proj = nn.Sequential(nn.Linear(width, hidden), nn.GELU(), nn.Linear(hidden, out_dim))

    def num_output_tokens(self, num_input_tokens: int) -> int:
        divisor = self.reducer.token_divisor()
        if num_input_tokens % divisor:
            raise ValueError(
                f"projector token_reduction {self.reducer.factor} cannot evenly reduce {num_input_tokens} encoder tokens"
            )
        return num_input_tokens // divisor

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        if features.shape[-1] != self.in_dim:
            raise ValueError(f"projector expects features of width {self.in_dim}, got {features.shape[-1]}")
        return self.proj(self.reducer(features))


def build_projector(
    kind: str,
    encoder_hidden_size: int,
    llm_hidden_size: int,
    *,
    token_reduction: int = 1,
    reduction_mode: str = "shuffle",
    grid: bool = True,
) -> Projector:
    for what, size in (("encoder hidden size", encoder_hidden_size), ("LLM hidden size", llm_hidden_size)):
        if not isinstance(size, int) or size <= 0:
            raise ValueError(f"projector needs a positive integer {what}, got {size!r}")
    return Projector(
        kind,
        encoder_hidden_size,
        llm_hidden_size,
        token_reduction=token_reduction,
        reduction_mode=reduction_mode,
        grid=grid,
    )

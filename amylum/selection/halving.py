"""Successive halving (SHA) over arms (here: each candidate cluster's representative pair).

Rung k trains every live arm to data fraction ``initial · ηᵏ`` and keeps the best
``max(min_survivors, ⌈live/η⌉)``. It stops once at most ``min_survivors`` arms are live or the
next fraction would pass ``max_fraction`` (Mordal: 3 %, η = 2, R = 1/8, ~3 clusters left).

``train_to(arm, fraction) -> error`` is the caller's; it must resume the arm from the
checkpoint of its previous rung (so a rung costs only the steps it adds). Lower error wins;
ties keep the arm listed first.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Hashable, Sequence

Arm = Hashable


@dataclass
class Rung:
    fraction: float
    errors: dict  # arm → error at this rung
    kept: list
    pruned: list
    reasons: dict = field(default_factory=dict)  # arm → why it was pruned


@dataclass
class HalvingResult:
    rungs: list[Rung]
    survivors: list
    stopped: str  # why the search stopped


def successive_halving(
    arms: Sequence[Arm],
    train_to: Callable[[Arm, float], float],
    *,
    initial_fraction: float = 0.03,
    eta: float = 2.0,
    max_fraction: float = 0.125,
    min_survivors: int = 3,
    label: Callable[[Arm], str] = str,
) -> HalvingResult:
    if eta <= 1:
        raise ValueError(f"the reduction factor eta must be > 1, got {eta}")
    if not 0 < initial_fraction <= max_fraction:
        raise ValueError(f"need 0 < initial_fraction ({initial_fraction}) ≤ max_fraction ({max_fraction})")
    if min_survivors < 1:
        raise ValueError(f"min_survivors must be ≥ 1, got {min_survivors}")
    live = list(arms)
    if len(set(live)) != len(live):
        raise ValueError("arms must be distinct")
    rungs: list[Rung] = []
    fraction = initial_fraction
    stopped = f"{len(live)} arm(s) ≤ min_survivors={min_survivors}: nothing to prune"
    while len(live) > min_survivors:
        errors = {arm: float(train_to(arm, fraction)) for arm in live}
        ranked = sorted(live, key=lambda a: (errors[a], live.index(a)))
        keep = max(min_survivors, math.ceil(len(live) / eta))
        kept, pruned = ranked[:keep], ranked[keep:]
        cutoff = errors[kept[-1]]
        reasons = {
            a: f"error {errors[a]:.4g} ranks {ranked.index(a) + 1}/{len(live)} at r={fraction:.4g}; "
               f"keeping the top {keep} (cut-off error {cutoff:.4g})"
            for a in pruned
        }
        rungs.append(Rung(fraction, errors, kept, pruned, reasons))
        live = [a for a in live if a in kept]
        fraction *= eta
        if len(live) <= min_survivors:
            stopped = f"{len(live)} arm(s) left (min_survivors={min_survivors})"
            break
        if fraction > max_fraction * (1 + 1e-9):
            stopped = f"next fraction {fraction:.4g} would pass max_fraction R={max_fraction:.4g}"
            break
    return HalvingResult(rungs, live, stopped)

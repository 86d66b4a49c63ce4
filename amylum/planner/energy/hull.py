"""Per-computation time–cost curves the frontier solver works on.

A computation's clocks give points (time, effective cost), where effective cost
e′ = e − P_blocking·t (Perseus: running an op longer saves the blocking power its GPU would
otherwise draw while waiting, so only e′ is traded against time). Steps:

1. Quantize time to integer units of τ, rounding **up**: an op planned for d units then truly
   takes ≤ d·τ, so a plan's real iteration time never exceeds its label.
2. Pareto filter on (units, e′): a clock that is both slower and costlier is never useful.
3. Lower convex hull of the survivors. The solver moves durations along this piecewise-linear
   convex curve, on which Phillips–Dessouky is exact. Perseus fits a·e^{bt}+c instead; the fit
   can fail or overflow (gap 7), the hull cannot.
4. Back to clocks: a duration d maps to the slowest surviving clock whose quantized time is
   ≤ d, so every plan is a real per-computation clock assignment.
"""

from __future__ import annotations

import bisect
import math
from dataclasses import dataclass

from .dag import DAGError, Option


@dataclass(frozen=True)
class Curve:
    """Pareto options and their convex hull for one computation, times in units of τ."""

    pareto_units: tuple[int, ...]  # ascending
    pareto_options: tuple[Option, ...]  # same order: faster → slower, costlier → cheaper
    hull_units: tuple[int, ...]  # ascending vertex durations
    hull_costs: tuple[float, ...]  # e′ at the vertices, strictly decreasing

    @property
    def min_units(self) -> int:
        return self.hull_units[0]

    @property
    def max_units(self) -> int:
        return self.hull_units[-1]

    def cost(self, d: int) -> float:
        """e′ of duration d by linear interpolation on the hull (clamped to its range)."""
        hu, hc = self.hull_units, self.hull_costs
        if d <= hu[0]:
            return hc[0]
        if d >= hu[-1]:
            return hc[-1]
        j = bisect.bisect_right(hu, d) - 1
        if hu[j] == d:
            return hc[j]
        return hc[j] + (hc[j + 1] - hc[j]) * (d - hu[j]) / (hu[j + 1] - hu[j])

    def option_for(self, d: int) -> Option:
        """The slowest clock whose quantized time fits in d units (the fastest if none does)."""
        i = bisect.bisect_right(self.pareto_units, d) - 1
        return self.pareto_options[max(i, 0)]


def quantize(time_s: float, unit_s: float) -> int:
    # The 1e-9 guard keeps 0.003/0.001 from becoming 4 through float noise.
    return max(1, math.ceil(time_s / unit_s - 1e-9))


def build_curve(options: tuple[Option, ...], blocking_w: float, unit_s: float,
                simplify: float = 0.0) -> Curve:
    """Curve of one computation. ``simplify`` > 0 drops hull vertices while every dropped one
    lies within ``simplify`` × (the computation's largest energy) of the chord that replaces it.

    Why simplify: the solver's phases end whenever a moving computation reaches a hull vertex,
    and quantized measurements put a vertex at nearly every unit of τ. A chord is a pessimistic
    (convex-preserving) model between its ends; the clock finally chosen is still a real one.
    """
    if unit_s <= 0:
        raise DAGError(f"unit time must be > 0 s, got {unit_s}")
    pts = sorted(((quantize(o.time_s, unit_s), o.energy_j - blocking_w * o.time_s, o) for o in options),
                 key=lambda p: (p[0], p[1]))
    # Pareto: walking from fast to slow, keep an option only if it is strictly cheaper than every
    # faster one (equal quantized time: the cheaper comes first after the sort and wins).
    pu: list[int] = []
    pc: list[float] = []
    po: list[Option] = []
    for u, c, o in pts:
        if pu and (u == pu[-1] or c >= pc[-1]):
            continue
        pu.append(u)
        pc.append(c)
        po.append(o)
    # Lower convex hull (monotone chain); the Pareto points are sorted by time already.
    hu: list[int] = []
    hc: list[float] = []
    for u, c in zip(pu, pc):
        while len(hu) >= 2:
            u1, c1, u2, c2 = hu[-2], hc[-2], hu[-1], hc[-1]
            # drop the middle point if it lies on or above the chord from (u1,c1) to (u,c)
            if (c2 - c1) * (u - u1) >= (c - c1) * (u2 - u1):
                hu.pop()
                hc.pop()
            else:
                break
        hu.append(u)
        hc.append(c)
    if simplify > 0 and len(hu) > 2:
        hu, hc = _simplify(hu, hc, simplify * max(o.energy_j for o in po))
    return Curve(tuple(pu), tuple(po), tuple(hu), tuple(hc))


def _simplify(hu: list[int], hc: list[float], tol: float) -> tuple[list[int], list[float]]:
    # Greedy: from each kept vertex, reach the farthest vertex whose chord stays within tol of
    # every vertex in between. Chords of a convex chain keep the chain convex.
    ku, kc = [hu[0]], [hc[0]]
    a = 0
    while a < len(hu) - 1:
        b = a + 1
        while b + 1 < len(hu):
            nb = b + 1
            slope = (hc[nb] - hc[a]) / (hu[nb] - hu[a])
            if all(hc[a] + slope * (hu[i] - hu[a]) - hc[i] <= tol for i in range(a + 1, nb)):
                b = nb
            else:
                break
        ku.append(hu[b])
        kc.append(hc[b])
        a = b
    return ku, kc

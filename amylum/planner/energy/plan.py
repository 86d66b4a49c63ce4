"""GPU frequency plans: a clock per computation per rank, chosen from a frontier.

A plan is JSON (Perseus writes Python literals that its server reads back with ``eval``; a
plan file is user-editable input, so it is parsed and validated here, never evaluated):

    {"format": "amylum.frequency_plan", "version": 1,
     "iteration_time_s": 1.234, "energy_j": 5678.9, "effective_cost_j": 4321.0,
     "unit_time_s": 0.0001, "blocking_power_w": {"0": 70.0, ...},
     "ranks": {"0": [{"action": "F", "stage": 0, "microbatch": 0, "mhz": 1410}, ...], ...}}

``ranks`` lists each rank's (stage's) computations in execution order; every GPU of that
stage (its TP/DP ranks) runs the same list. Choosing a point:
- ``pick(frontier, T)``: least energy with iteration time ≤ T (T beyond T* gets the T* plan);
- ``for_straggler(frontier, T′)``: Perseus's rule, the plan at min(T′, T*), where T* is the
  slow end of the frontier (every computation at its cheapest clock; slowing further saves
  nothing, the remaining wait is blocking power).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .frontier import Frontier, FrontierPoint

FORMAT = "amylum.frequency_plan"
VERSION = 1


class PlanError(ValueError):
    """A plan file is malformed, or no frontier point meets a requested time."""


@dataclass(frozen=True)
class ClockStep:
    action: str  # F, B or W
    stage: int
    microbatch: int
    mhz: int


@dataclass(frozen=True)
class FrequencyPlan:
    iteration_time_s: float
    energy_j: float
    effective_cost_j: float
    unit_time_s: float
    blocking_power_w: dict[int, float]
    ranks: dict[int, tuple[ClockStep, ...]]

    # ---- JSON -------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {
            "format": FORMAT, "version": VERSION,
            "iteration_time_s": self.iteration_time_s, "energy_j": self.energy_j,
            "effective_cost_j": self.effective_cost_j, "unit_time_s": self.unit_time_s,
            "blocking_power_w": {str(r): p for r, p in sorted(self.blocking_power_w.items())},
            "ranks": {str(r): [{"action": c.action, "stage": c.stage, "microbatch": c.microbatch, "mhz": c.mhz}
                               for c in steps] for r, steps in sorted(self.ranks.items())},
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(self.to_json())

    @classmethod
    def from_json(cls, text: str) -> "FrequencyPlan":
        try:
            raw = json.loads(text)
        except json.JSONDecodeError as e:
            raise PlanError(f"plan is not valid JSON: {e}") from None
        return cls.from_dict(raw)

    @classmethod
    def load(cls, path: str | Path) -> "FrequencyPlan":
        return cls.from_json(Path(path).read_text())

    @classmethod
    def from_dict(cls, raw: Any) -> "FrequencyPlan":
        if not isinstance(raw, dict) or raw.get("format") != FORMAT:
            raise PlanError(f"not a frequency plan (expected \"format\": \"{FORMAT}\")")
        if raw.get("version") != VERSION:
            raise PlanError(f"unsupported plan version {raw.get('version')!r}; this amylum reads {VERSION}")

        def num(key: str) -> float:
            v = raw.get(key)
            if isinstance(v, bool) or not isinstance(v, (int, float)):
                raise PlanError(f"plan field {key!r} must be a number, got {v!r}")
            return float(v)

        def rank_id(k: Any) -> int:
            try:
                return int(k)
            except (TypeError, ValueError):
                raise PlanError(f"rank key {k!r} is not an integer") from None

        power = raw.get("blocking_power_w")
        ranks = raw.get("ranks")
        if not isinstance(power, dict) or not isinstance(ranks, dict):
            raise PlanError("plan needs objects 'blocking_power_w' and 'ranks'")
        steps: dict[int, tuple[ClockStep, ...]] = {}
        for k, lst in ranks.items():
            r = rank_id(k)
            if not isinstance(lst, list):
                raise PlanError(f"rank {r}: expected a list of steps")
            out = []
            for i, st in enumerate(lst):
                if not isinstance(st, dict) or set(st) != {"action", "stage", "microbatch", "mhz"}:
                    raise PlanError(f"rank {r} step {i}: expected keys action, stage, microbatch, mhz; got {st!r}")
                if st["action"] not in ("F", "B", "W"):
                    raise PlanError(f"rank {r} step {i}: action must be F, B or W, got {st['action']!r}")
                for f in ("stage", "microbatch", "mhz"):
                    if isinstance(st[f], bool) or not isinstance(st[f], int) or st[f] < 0:
                        raise PlanError(f"rank {r} step {i}: {f} must be a non-negative integer, got {st[f]!r}")
                if st["mhz"] == 0:
                    raise PlanError(f"rank {r} step {i}: clock must be > 0 MHz")
                out.append(ClockStep(st["action"], st["stage"], st["microbatch"], st["mhz"]))
            steps[r] = tuple(out)
        return cls(num("iteration_time_s"), num("energy_j"), num("effective_cost_j"), num("unit_time_s"),
                   {rank_id(k): float(v) for k, v in power.items()}, steps)

    def perseus_lists(self) -> dict[int, list[tuple[str, int]]]:
        """Per rank [("forward"|"backward"|"weight", MHz)], the shape Zeus's client consumes."""
        name = {"F": "forward", "B": "backward", "W": "weight"}
        return {r: [(name[c.action], c.mhz) for c in s] for r, s in self.ranks.items()}


def plan_from_point(frontier: Frontier, point: FrontierPoint) -> FrequencyPlan:
    dag = frontier.dag
    ranks = {r: tuple(ClockStep(dag.nodes[i].kind, dag.nodes[i].stage, dag.nodes[i].microbatch,
                                point.options[i].freq_mhz) for i in ids)
             for r, ids in dag.order.items()}
    return FrequencyPlan(point.iteration_time_s, point.energy_j, point.effective_cost_j, frontier.unit_s,
                         dict(dag.blocking_power_w), ranks)


def pick(frontier: Frontier, target_time_s: float) -> FrequencyPlan:
    """Least-energy plan whose iteration time is ≤ ``target_time_s``."""
    units = int(target_time_s / frontier.unit_s + 1e-9)  # floor: the plan must fit in the target
    if units < frontier.t_min_units:
        raise PlanError(f"no plan is as fast as {target_time_s:.6g} s; the shortest iteration is "
                        f"{frontier.t_min_s:.6g} s")
    units = min(units, frontier.t_max_units)
    return plan_from_point(frontier, frontier.point(units))


def for_straggler(frontier: Frontier, t_prime_s: float) -> FrequencyPlan:
    """Plan for a pipeline that must wait for a straggler finishing at T′: min(T′, T*)."""
    return pick(frontier, min(t_prime_s, frontier.t_star_s))


def fastest(frontier: Frontier) -> FrequencyPlan:
    """No straggler: the shortest iteration, with every off-critical computation slowed."""
    return plan_from_point(frontier, frontier.point(frontier.t_min_units))


def sample(frontier: Frontier, count: int) -> list[FrequencyPlan]:
    """``count`` plans at equal time spacing from fastest to T* (Perseus samples 20–40)."""
    if count < 1:
        raise PlanError(f"count must be >= 1, got {count}")
    lo, hi = frontier.t_min_units, frontier.t_max_units
    if count == 1 or hi == lo:
        return [fastest(frontier)]
    units = sorted({lo + round(i * (hi - lo) / (count - 1)) for i in range(count)})
    return [plan_from_point(frontier, frontier.point(u)) for u in units]

"""Throughput under node-failure traces: amylum vs checkpoint-and-restart.

Both systems run the same planner's iteration time for the nodes they have; they differ only in
what a failure costs.

- amylum: the step in flight is lost; the survivors re-plan from the templates (``replan``) and
  copy the layers they now need — weights, gradients and optimizer state — from surviving
  replicas; recovery = a fixed reconfiguration time + the slowest node's copy time. The global
  batch is kept, so every completed step is worth the same number of samples.
- checkpoint-and-restart: a blocking checkpoint every K steps; on a failure everything since the
  last completed checkpoint is lost, then a full restart (new processes, reload, rendezvous) and
  training continues on the survivors with the best plan for that many nodes (no replicas needed).

The simulation is deterministic and event-driven over a trace of node removals/additions. An event
that arrives while a recovery is still running is applied when that recovery ends (recoveries
here last seconds to minutes, the traces' gaps are ≥ 10 minutes).
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from typing import Callable

from .instantiate import instantiate, replan
from .templates import TemplateSet


@dataclass(frozen=True)
class Trace:
    start_nodes: tuple  # node ids up at t = 0
    events: tuple  # ((time_s, "remove" | "add", node id), ...) in time order
    horizon_s: float

    def __post_init__(self) -> None:
        times = [e[0] for e in self.events]
        if times != sorted(times):
            raise ValueError("trace events must be in time order")
        if any(k not in ("remove", "add") for _, k, _ in self.events):
            raise ValueError("trace events are 'remove' or 'add'")
        if times and times[-1] > self.horizon_s:
            raise ValueError(f"event at {times[-1]} s after the horizon {self.horizon_s} s")


def synthetic_trace(interval_s: float, start: int = 30, removals: int = 15, seed: int = 0) -> Trace:
    """Oobleck's synthetic traces: from ``start`` nodes, one random node lost every ``interval_s``,
    ``removals`` times; the run lasts one more interval after the last loss."""
    if removals >= start:
        raise ValueError(f"cannot remove {removals} of {start} nodes")
    rng = random.Random(seed)
    alive = list(range(start))
    events = []
    for i in range(1, removals + 1):
        victim = alive.pop(rng.randrange(len(alive)))
        events.append((i * interval_s, "remove", victim))
    return Trace(tuple(range(start)), tuple(events), (removals + 1) * interval_s)


@dataclass
class SimResult:
    system: str
    seconds: float = 0.0
    samples: float = 0.0
    failures: int = 0
    breakdown: dict = field(default_factory=lambda: {
        "effective": 0.0, "lost": 0.0, "recovery": 0.0, "checkpoint": 0.0, "restart": 0.0})

    @property
    def throughput(self) -> float:
        return self.samples / self.seconds if self.seconds else 0.0

    def share(self, key: str) -> float:
        return self.breakdown[key] / self.seconds if self.seconds else 0.0


def _apply(alive: list, kind: str, node) -> list:
    if kind == "remove":
        if node not in alive:
            raise ValueError(f"trace removes node {node!r}, which is not up")
        return [n for n in alive if n != node]
    if node in alive:
        raise ValueError(f"trace adds node {node!r}, which is already up")
    return alive + [node]


def simulate_amylum(trace: Trace, ts: TemplateSet, f: int, global_microbatches: int,
                    samples_per_step: float, reconfigure_s: float) -> SimResult:
    """Re-plan from templates on every membership change; layers copied from surviving replicas."""
    res = SimResult("amylum")
    alive = list(trace.start_nodes)
    inst = instantiate(ts, alive, f, global_microbatches)
    tau, run_from = inst.makespan_s, 0.0
    for te, kind, node in trace.events:
        te = max(te, run_from)
        steps = math.floor((te - run_from) / tau)
        res.samples += steps * samples_per_step
        res.breakdown["effective"] += steps * tau
        res.breakdown["lost"] += (te - run_from) - steps * tau  # the step in flight
        alive = _apply(alive, kind, node)
        rec = replan(ts, inst, alive, f, global_microbatches)
        inst, tau = rec.instance, rec.instance.makespan_s
        r = reconfigure_s + rec.copy_time_s
        res.breakdown["recovery"] += r
        res.failures += kind == "remove"
        run_from = te + r
    _finish(res, trace.horizon_s, run_from, tau, samples_per_step)
    return res


def _finish(res: SimResult, horizon: float, run_from: float, tau: float, sps: float) -> None:
    if horizon > run_from:
        steps = math.floor((horizon - run_from) / tau)
        res.samples += steps * sps
        res.breakdown["effective"] += steps * tau
        res.breakdown["lost"] += (horizon - run_from) - steps * tau  # unfinished at the end
    res.seconds = horizon


def simulate_checkpoint_restart(trace: Trace, step_time: Callable[[int], float], samples_per_step: float,
                                every_k: int, checkpoint_s: float, restart_s: float) -> SimResult:
    """Checkpoint every ``every_k`` steps (blocking ``checkpoint_s``); each membership change loses
    the work since the last checkpoint and costs ``restart_s``; ``step_time(n)`` for n nodes."""
    if every_k < 1:
        raise ValueError(f"every_k must be >= 1, got {every_k}")
    res = SimResult(f"ckpt-restart K={every_k}")
    alive = list(trace.start_nodes)
    tau, run_from = step_time(len(alive)), 0.0
    for te, kind, node in trace.events:
        te = max(te, run_from)
        cycle = every_k * tau + checkpoint_s
        done = math.floor((te - run_from) / cycle)  # checkpoints completed since the (re)start
        res.samples += done * every_k * samples_per_step
        res.breakdown["effective"] += done * every_k * tau
        res.breakdown["checkpoint"] += done * checkpoint_s
        res.breakdown["lost"] += (te - run_from) - done * cycle  # since the last checkpoint
        alive = _apply(alive, kind, node)
        res.breakdown["restart"] += restart_s
        res.failures += kind == "remove"
        run_from = te + restart_s
        tau = step_time(len(alive))
    # to the horizon: whole cycles, then the steps of the last partial cycle (the run ends there)
    cycle = every_k * tau + checkpoint_s
    span = max(trace.horizon_s - run_from, 0.0)
    done = math.floor(span / cycle)
    tail_steps = min(every_k, math.floor((span - done * cycle) / tau))
    steps = done * every_k + tail_steps
    res.samples += steps * samples_per_step
    res.breakdown["effective"] += steps * tau
    res.breakdown["checkpoint"] += done * checkpoint_s
    res.breakdown["lost"] += span - steps * tau - done * checkpoint_s
    res.seconds = trace.horizon_s
    return res


def best_checkpoint_interval(trace: Trace, step_time: Callable[[int], float], samples_per_step: float,
                             checkpoint_s: float, restart_s: float, k_max: int = 500) -> SimResult:
    """The baseline at its best K for this trace (an oracle: it knows the failure times)."""
    best = None
    for k in range(1, k_max + 1):
        r = simulate_checkpoint_restart(trace, step_time, samples_per_step, k, checkpoint_s, restart_s)
        if best is None or r.samples > best.samples:
            best = r
    best.system = best.system.replace("K=", "best K=")
    return best


__all__ = ["Trace", "synthetic_trace", "SimResult", "simulate_amylum", "simulate_checkpoint_restart",
           "best_checkpoint_interval"]

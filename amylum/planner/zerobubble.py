"""Zero-bubble-style action lists (W split) for a DAG of stages, ordered on the cost model.

Why: under 1F1B a stage's weight gradient (W) sits between its input gradient (B) and the next
backward upstream, so every stage's W lies on the backward critical path, and the cool-down waits
are pure bubble. Splitting W off (ZB-H1, Qi et al. 2024) lets a stage send its input gradient as
soon as B ends and run W later, in time it would otherwise spend waiting.

The order is found by a list scheduler that runs the cost model's durations: each stage, when it
is free, takes the first of
  1. B of its oldest forwarded microbatch whose gradients have all arrived (keeps the backward
     wave moving upstream: it is what the stages before it wait on);
  2. F of its next microbatch, if its inputs have arrived and it holds fewer microbatches than
     its cap: 1F1B's peak (downstream depth + 1) by default; ``memory_caps`` raises a stage's cap
     up to the first stage's peak where its memory allows (ZB-H1's observation: the last stages
     of 1F1B hold few microbatches, so deferring their W costs no *peak* memory);
  3. a pending W (a microbatch counts as held until its W is done);
and otherwise waits for the next message. The result is plain data (F/B/W/SEND/RECV per stage),
deadlock-free for any durations: RECVs only block, and the order was realised once. Replaying it
with the same durations gives the times found here.
"""

from __future__ import annotations

import heapq
from collections import deque
from typing import Callable

from .schedule import Action, StageGraph


def zero_bubble_schedule(g: StageGraph, m: int, duration: Callable[[int, str], float],
                         transfer: Callable[[int, int, str], float],
                         caps: dict[int, int] | None = None) -> dict[int, list[Action]]:
    """Per-stage action lists with W split off B and placed into waits (see module docstring).

    ``caps[s]`` bounds the microbatches stage s holds (forwarded, W not done); the default is
    1F1B's peak, downstream depth + 1. ``memory_caps`` gives larger ones where memory allows.
    """
    if m < 1:
        raise ValueError(f"need at least one microbatch, got {m}")
    depth = g.depth
    outs = g.consumers
    stages = g.stages
    cap = {s: max(1, min(m, (caps or {}).get(s, depth[s] + 1))) for s in stages}
    acts: dict[int, list[Action]] = {s: [] for s in stages}
    arrived: dict[tuple, float] = {}  # (src, dst, data, mb) -> landing time
    next_f = {s: 0 for s in stages}
    fwd_done: dict[int, deque] = {s: deque() for s in stages}  # forwarded, B pending
    pending_w: dict[int, deque] = {s: deque() for s in stages}
    held = {s: 0 for s in stages}
    clock = {s: 0.0 for s in stages}
    due: dict[int, float] = {}  # the one live heap entry per stage: when it next looks for work
    heap: list[tuple[float, int]] = []

    def wake(s: int, at: float) -> None:
        if at < due.get(s, float("inf")):
            due[s] = at
            heapq.heappush(heap, (at, s))

    for s in stages:
        wake(s, 0.0)

    def post(src: int, dst: int, data: str, k: int, t: float) -> None:
        land = t + transfer(src, dst, data)
        arrived[(src, dst, data, k)] = land
        wake(dst, max(land, clock[dst]))

    def ready(keys):
        """None if a message is still unposted; else the latest landing time."""
        latest = 0.0
        for key in keys:
            if key not in arrived:
                return None
            latest = max(latest, arrived[key])
        return latest

    while heap:
        t, s = heapq.heappop(heap)
        if due.get(s) != t:
            continue  # superseded by an earlier wake-up
        del due[s]
        if t < clock[s]:
            wake(s, clock[s])  # still busy: decide only once every earlier message is posted
            continue
        bwd = g.has_bwd[s]
        choice, wake_at = None, []
        if bwd and fwd_done[s]:
            k = fwd_done[s][0]
            at = ready([(q, s, "grad", k) for q in outs[s]])
            if at is not None and at <= t:
                choice = ("B", k)
            elif at is not None:
                wake_at.append(at)
        if choice is None and next_f[s] < m and (not bwd or held[s] < cap[s]):
            k = next_f[s]
            at = ready([(p, s, "act", k) for p in g.inputs[s]])
            if at is not None and at <= t:
                choice = ("F", k)
            elif at is not None:
                wake_at.append(at)
        if choice is None and pending_w[s]:
            choice = ("W", pending_w[s][0])
        if choice is None:
            if wake_at:  # otherwise the next post() to this stage wakes it
                wake(s, min(wake_at))
            continue
        op, k = choice
        out = acts[s]
        if op == "F":
            out += [Action("RECV", s, k, p, "act") for p in g.inputs[s]]
            out.append(Action("F", s, k))
            end = t + duration(s, "F")
            for q in outs[s]:
                out.append(Action("SEND", s, k, q, "act"))
                post(s, q, "act", k, end)
            next_f[s] += 1
            if bwd:
                fwd_done[s].append(k)
                held[s] += 1
        elif op == "B":
            out += [Action("RECV", s, k, q, "grad") for q in outs[s]]
            out.append(Action("B", s, k))
            end = t + duration(s, "B")
            for p in g.inputs[s]:
                if g.has_bwd[p]:  # the gradient goes upstream before W: that is the point
                    out.append(Action("SEND", s, k, p, "grad"))
                    post(s, p, "grad", k, end)
            fwd_done[s].popleft()
            if g.has_w[s]:
                pending_w[s].append(k)
            else:
                held[s] -= 1
        else:
            out.append(Action("W", s, k))
            end = t + duration(s, "W")
            pending_w[s].popleft()
            held[s] -= 1
        clock[s] = end
        wake(s, end)
    stuck = [s for s in stages if next_f[s] < m or fwd_done[s] or pending_w[s]]
    if stuck:  # cannot happen for a DAG: every wait is on a message a stage ahead will post
        raise RuntimeError(f"zero-bubble scheduler stalled at stages {stuck}")
    return acts


def memory_caps(g: StageGraph, m: int, free_bytes: dict[int, float], act_bytes: dict[int, float]) -> dict[int, int]:
    """Per-stage hold limits: 1F1B's, raised towards the deepest stage's where memory allows.

    ``free_bytes[s]``: memory left on stage s's GPUs after weights, optimizer state and the
    working set; ``act_bytes[s]``: what one held microbatch keeps. The simulator still counts
    what is really held and rejects a plan that does not fit.
    """
    depth = g.depth
    top = min(m, max(depth.values()) + 1)
    out = {}
    for s in g.stages:
        base = min(m, depth[s] + 1)
        fit = top if act_bytes[s] <= 0 else int(free_bytes[s] // act_bytes[s])
        out[s] = max(base, min(top, fit))
    return out

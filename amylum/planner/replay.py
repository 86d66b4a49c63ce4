"""Discrete-event replay of per-stage action lists: the engine under the validator and simulator.

Each stage executes its list in order on its own clock. Compute actions take their duration;
a SEND posts a message that lands after the transfer time (the sender does not wait); a RECV
blocks until its message has landed. A stage blocked on a RECV whose SEND never comes is a
deadlock (or a missing SEND); the replay reports exactly which action each stuck stage waits on.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Callable

from .schedule import Action


@dataclass
class Trace:
    end: dict[int, float]  # when each stage finished its last action
    events: list[tuple[int, str, int, float, float]]  # (stage, op, mb, start, end) for F/B/W
    stuck: dict[int, Action] = field(default_factory=dict)  # stage -> action it waits on forever
    unmatched_sends: list[tuple] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    max_inflight: dict[int, int] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.stuck and not self.unmatched_sends and not self.errors


def replay(schedule: dict[int, list[Action]], duration: Callable[[int, str], float],
           transfer: Callable[[int, int, str], float], last_bwd_op: Callable[[int], str] | None = None) -> Trace:
    """Run the lists; ``last_bwd_op(stage)`` names the op that frees a microbatch's activations."""
    clock = {s: 0.0 for s in schedule}
    pos = {s: 0 for s in schedule}
    inflight = {s: 0 for s in schedule}
    max_inflight = {s: 0 for s in schedule}
    msgs: dict[tuple, float] = {}
    waiting: dict[tuple, int] = {}
    events: list = []
    errors: list[str] = []
    has_bwd = {s: any(a.op in ("B", "W") for a in acts) for s, acts in schedule.items()}
    ready = deque(sorted(schedule))
    while ready:
        s = ready.popleft()
        acts = schedule[s]
        while pos[s] < len(acts):
            a = acts[pos[s]]
            if a.op == "RECV":
                key = (a.peer, s, a.data, a.mb)
                if key not in msgs:
                    waiting[key] = s
                    break
                clock[s] = max(clock[s], msgs.pop(key))
            elif a.op == "SEND":
                key = (s, a.peer, a.data, a.mb)
                if a.peer not in schedule:
                    errors.append(f"stage {s}: {a} targets a stage that has no action list")
                elif key in msgs:
                    errors.append(f"stage {s}: {a} is sent twice before being received")
                else:
                    msgs[key] = clock[s] + transfer(s, a.peer, a.data)
                    if key in waiting:
                        ready.append(waiting.pop(key))
            elif a.op in ("F", "B", "W"):
                d = duration(s, a.op)
                events.append((s, a.op, a.mb, clock[s], clock[s] + d))
                clock[s] += d
                if a.op == "F" and has_bwd[s]:
                    inflight[s] += 1
                    max_inflight[s] = max(max_inflight[s], inflight[s])
                elif last_bwd_op is not None and a.op == last_bwd_op(s):
                    inflight[s] -= 1
            else:
                errors.append(f"stage {s}: unknown op {a.op!r}")
            pos[s] += 1
    stuck = {s: schedule[s][pos[s]] for s in schedule if pos[s] < len(schedule[s])}
    return Trace(end=clock, events=events, stuck=stuck, unmatched_sends=sorted(msgs), errors=errors,
                 max_inflight=max_inflight)

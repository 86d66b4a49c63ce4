"""Pipeline schedules as data: per-stage action lists for a DAG of stages.

Every rank of a stage (its TP group, in every DP replica) runs that stage's list; peers are stage
ids, mapped to ranks through the plan. Frozen-aware pruning: a stage with no backward work gets
no B/W actions and receives no gradients; a stage sends a gradient upstream only to a stage that
has backward work. Sends are asynchronous (buffered); a RECV blocks until its SEND's data lands.
"""

from __future__ import annotations

from dataclasses import dataclass

OPS = ("F", "B", "W", "SEND", "RECV")


@dataclass(frozen=True)
class Action:
    op: str
    stage: int
    mb: int
    peer: int = -1  # the other stage of a SEND/RECV
    data: str = ""  # "act" or "grad" for SEND/RECV

    def __str__(self) -> str:
        if self.op in ("SEND", "RECV"):
            arrow = "->" if self.op == "SEND" else "<-"
            return f"{self.op}({self.data} mb{self.mb} {arrow} s{self.peer})"
        return f"{self.op}{self.mb}"


@dataclass(frozen=True)
class StageGraph:
    """The stage DAG with what backward work each stage does."""

    inputs: dict[int, tuple[int, ...]]
    has_bwd: dict[int, bool]
    has_w: dict[int, bool]

    def __post_init__(self) -> None:
        for s, ins in self.inputs.items():
            for p in ins:
                if p not in self.inputs:
                    raise ValueError(f"stage {s} takes input from unknown stage {p}")
        self.depth  # raises on a cycle

    @property
    def stages(self) -> list[int]:
        return sorted(self.inputs)

    def outputs(self, s: int) -> tuple[int, ...]:
        return self.consumers[s]

    @property
    def consumers(self) -> dict[int, tuple[int, ...]]:
        out: dict[int, list[int]] = {s: [] for s in self.inputs}
        for q in sorted(self.inputs):
            for p in self.inputs[q]:
                out[p].append(q)
        return {s: tuple(v) for s, v in out.items()}

    @property
    def depth(self) -> dict[int, int]:
        """Stages on the longest path from each stage to a sink, excluding itself."""
        memo: dict[int, int] = {}
        consumers = self.consumers

        def d(s: int, path: tuple) -> int:
            if s in path:
                raise ValueError(f"stage graph has a cycle through {path + (s,)}")
            if s not in memo:
                outs = consumers[s]
                memo[s] = 0 if not outs else 1 + max(d(q, path + (s,)) for q in outs)
            return memo[s]

        return {s: d(s, ()) for s in self.stages}


def _f(g: StageGraph, outs: dict, s: int, k: int) -> list[Action]:
    acts = [Action("RECV", s, k, p, "act") for p in g.inputs[s]]
    acts.append(Action("F", s, k))
    acts += [Action("SEND", s, k, q, "act") for q in outs[s]]
    return acts


def _b(g: StageGraph, outs: dict, s: int, k: int, split_w: bool) -> list[Action]:
    acts = [Action("RECV", s, k, q, "grad") for q in outs[s]]
    acts.append(Action("B", s, k))
    if split_w and g.has_w[s]:
        acts.append(Action("W", s, k))
    acts += [Action("SEND", s, k, p, "grad") for p in g.inputs[s] if g.has_bwd[p]]
    return acts


def build_schedule(g: StageGraph, m: int, kind: str = "1f1b", split_w: bool = False) -> dict[int, list[Action]]:
    """GPipe or 1F1B action lists for every stage.

    1F1B warm-up: a stage runs as many forwards ahead as there are stages downstream of it on the
    longest path (Cornstarch's rule for encoders: own stages after it + LLM stages), capped at m.
    """
    if m < 1:
        raise ValueError(f"need at least one microbatch, got {m}")
    if kind not in ("1f1b", "gpipe"):
        raise ValueError(f"unknown schedule {kind!r}; choose 1f1b or gpipe")
    depth = g.depth
    outs = g.consumers
    out: dict[int, list[Action]] = {}
    for s in g.stages:
        acts: list[Action] = []
        if not g.has_bwd[s]:
            for k in range(m):
                acts += _f(g, outs, s, k)
        elif kind == "gpipe":
            for k in range(m):
                acts += _f(g, outs, s, k)
            for k in range(m):
                acts += _b(g, outs, s, k, split_w)
        else:
            warm = min(m, depth[s])
            for k in range(warm):
                acts += _f(g, outs, s, k)
            for i in range(m - warm):
                acts += _f(g, outs, s, warm + i)
                acts += _b(g, outs, s, i, split_w)
            for k in range(m - warm, m):
                acts += _b(g, outs, s, k, split_w)
        out[s] = acts
    return out

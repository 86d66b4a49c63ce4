"""Schedule validator: every RECV has its SEND, no deadlock, each microbatch's F before its B."""

from __future__ import annotations

from collections import Counter

from .replay import replay
from .schedule import Action


class ScheduleError(ValueError):
    pass


def schedule_errors(schedule: dict[int, list[Action]], m: int | None = None) -> list[str]:
    errs: list[str] = []
    sends, recvs = Counter(), Counter()
    for s, acts in schedule.items():
        seen: dict[tuple[str, int], int] = {}
        for i, a in enumerate(acts):
            if a.stage != s:
                errs.append(f"stage {s} action {i} ({a}) is labelled with stage {a.stage}")
            if a.op in ("F", "B", "W"):
                if (a.op, a.mb) in seen:
                    errs.append(f"stage {s}: {a.op} of microbatch {a.mb} appears twice")
                seen[(a.op, a.mb)] = i
            elif a.op == "SEND":
                sends[(s, a.peer, a.data, a.mb)] += 1
            elif a.op == "RECV":
                recvs[(a.peer, s, a.data, a.mb)] += 1
            else:
                errs.append(f"stage {s}: unknown op {a.op!r}")
        for (op, mb), i in seen.items():
            if op in ("B", "W") and seen.get(("F", mb), len(acts)) > i:
                errs.append(f"stage {s}: {op} of microbatch {mb} comes before its F")
            if op == "W" and seen.get(("B", mb), len(acts)) > i:
                errs.append(f"stage {s}: W of microbatch {mb} comes before its B")
        if m is not None:
            missing = [k for k in range(m) if ("F", k) not in seen]
            if missing:
                errs.append(f"stage {s}: no F for microbatches {missing[:8]}")
    for key in recvs - sends:
        src, dst, data, mb = key
        errs.append(f"stage {dst} RECVs {data} of microbatch {mb} from stage {src}, which never SENDs it")
    for key in sends - recvs:
        src, dst, data, mb = key
        errs.append(f"stage {src} SENDs {data} of microbatch {mb} to stage {dst}, which never RECVs it")
    if errs:
        return errs
    # structure is sound: replay with unit times to find circular waits
    tr = replay(schedule, lambda s, op: 1.0, lambda a, b, d: 0.0)
    if tr.stuck:
        waits = "; ".join(f"stage {s} waits on {a}" for s, a in sorted(tr.stuck.items()))
        errs.append(f"deadlock: {waits}")
    errs.extend(tr.errors)
    return errs


def check_schedule(schedule: dict[int, list[Action]], m: int | None = None) -> None:
    errs = schedule_errors(schedule, m)
    if errs:
        raise ScheduleError("invalid schedule:\n  " + "\n  ".join(errs))

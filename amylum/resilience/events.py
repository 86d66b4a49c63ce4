"""The run's event log: one JSON line per event, per node (``RUN_DIR/resilience/events-<node>.jsonl``).

Steps (with their loss and per-layer state digests), the sample positions each node consumes
(written before the step's first collective), restarts, recoveries and failures go here. Tests and ``bench/recovery.py`` read these files to
check sample accounting and state equality and to measure recovery time; each line is flushed as
it is written, so a node killed at any moment leaves every event before it.
"""

from __future__ import annotations

import json
import time
from pathlib import Path


class EventLog:
    def __init__(self, run_dir: str | Path, node: str) -> None:
        self.path = Path(run_dir) / "resilience" / f"events-{node}.jsonl"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.node = node

    def write(self, event: str, **fields) -> None:
        line = json.dumps({"t": time.time(), "event": event, "node": self.node, **fields})
        with open(self.path, "a") as f:
            f.write(line + "\n")


def read_events(run_dir: str | Path) -> list[dict]:
    """Every node's events, in time order."""
    out = []
    for p in sorted((Path(run_dir) / "resilience").glob("events-*.jsonl")):
        for line in p.read_text().splitlines():
            if line.strip():
                try:
                    out.append(json.loads(line))
                except json.JSONDecodeError:  # the last line of a node killed mid-write
                    continue
    return sorted(out, key=lambda e: e["t"])

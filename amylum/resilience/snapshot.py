"""Per-node host-memory snapshots: the training state a restarted worker gets back.

Layout: ``ROOT/<job>/<node>/step-00000012/{state.safetensors, meta.json}``, ROOT normally
``/dev/shm/amylum`` (RAM, survives the worker process, not the machine). A snapshot is written
into ``.tmp-…`` and renamed, so a worker killed mid-write leaves the previous snapshot intact and
never a half-written one. The last two are kept: a failure can interrupt a step after some nodes
committed it and before others did, and then the group resumes at the older step that all hold.

Only the node's own folder is ever read (``NodeSnapshots(root, job, node)``): state a node lacks
comes from a live peer over the process group, never from another node's files.

Writes run on one background thread, off the training loop: the step's tensors are copied (a
fast memory copy) and handed over; ``wait()`` joins the previous write, and the worker calls it
before the next step commits, so when any node completes step s+1, every node's snapshot of step
s is on disk.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import threading
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from amylum.resilience.recovery import SnapshotInfo

_STEP = re.compile(r"^step-(\d{8})$")
KEEP = 2


@dataclass(frozen=True)
class Snapshot:
    path: Path
    info: SnapshotInfo
    meta: dict


class NodeSnapshots:
    """Snapshots of one node (this process's node only)."""

    def __init__(self, root: str | Path, job: str, node: str) -> None:
        if not job or "/" in job or not node or "/" in node:
            raise ValueError(f"job and node ids must be non-empty names without '/', got {job!r}, {node!r}")
        self.dir = Path(root) / job / node
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None

    # ---- reading -----------------------------------------------------------------------------

    def list(self) -> list[Snapshot]:
        """Complete snapshots, oldest first (a folder without meta.json is incomplete)."""
        if not self.dir.is_dir():
            return []
        out = []
        for p in self.dir.iterdir():
            if _STEP.match(p.name) and (p / "meta.json").is_file() and (p / "state.safetensors").is_file():
                meta = json.loads((p / "meta.json").read_text())
                out.append(Snapshot(p, SnapshotInfo(meta["lineage"], int(meta["step"]), frozenset(meta["units"])), meta))
        return sorted(out, key=lambda s: s.info.step)

    @staticmethod
    def load(snap: Snapshot) -> dict[str, torch.Tensor]:
        return load_file(str(snap.path / "state.safetensors"))

    # ---- writing -----------------------------------------------------------------------------

    def write_async(self, step: int, tensors: dict[str, torch.Tensor], meta: dict) -> None:
        """Copy ``tensors`` now and write them on the background thread (after the previous write)."""
        self.wait()
        copies = {k: v.detach().to("cpu", copy=True).contiguous() for k, v in tensors.items()}
        meta = dict(meta, step=step)
        self._thread = threading.Thread(target=self._write_guarded, args=(step, copies, meta),
                                        name="amylum-snapshot", daemon=True)
        self._thread.start()

    def wait(self) -> None:
        """Join the write in flight; re-raise its error (a node without snapshots must not go on)."""
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self._error is not None:
            err, self._error = self._error, None
            raise RuntimeError(f"writing a snapshot to {self.dir} failed: {err}") from err

    def _write_guarded(self, step, tensors, meta) -> None:
        try:
            self.write(step, tensors, meta)
        except BaseException as e:  # surfaced by wait()
            self._error = e

    def write(self, step: int, tensors: dict[str, torch.Tensor], meta: dict) -> Path:
        self.dir.mkdir(parents=True, exist_ok=True)
        final = self.dir / f"step-{step:08d}"
        tmp = self.dir / f".tmp-step-{step:08d}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        save_file(tensors, str(tmp / "state.safetensors"))
        (tmp / "meta.json").write_text(json.dumps(dict(meta, step=step)))
        if final.exists():  # the same step redone after a rollback: replace it
            shutil.rmtree(final)
        os.rename(tmp, final)
        self._prune()
        return final

    def _prune(self) -> None:
        snaps = self.list()
        for old in snaps[:-KEEP]:
            shutil.rmtree(old.path, ignore_errors=True)
        for stale in self.dir.glob(".tmp-step-*"):  # left by a worker killed mid-write (one writer per node)
            shutil.rmtree(stale, ignore_errors=True)

    def drop_after(self, step: int, lineage: str) -> None:
        """Forget snapshots the group rolled back from (a later step, or another lineage)."""
        for s in self.list():
            if s.info.step > step or s.info.lineage != lineage:
                shutil.rmtree(s.path, ignore_errors=True)

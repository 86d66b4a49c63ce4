"""Full training-state checkpoints: atomic, pickle-free, keep-last-K.

Layout of one checkpoint ``CKPT_ROOT/step-00000100/``::

    state/                   model (trainable parameters) + optimizer tensors, written by
                             torch.distributed.checkpoint through its safetensors storage writer
    rank-00000.json          everything else for this rank: step, scheduler, data position,
                             RNG states, optimizer hyper-parameters (a JSON tree)
    rank-00000.safetensors   the tensors that JSON tree refers to (RNG states, …)
    manifest.json            every file above with its size; written last

Atomicity: everything is written into ``.tmp-step-00000100``, every file and folder is fsynced,
then the folder is renamed to ``step-00000100`` (one atomic ``rename``) and the parent is fsynced.
Only ``step-*`` folders whose manifest matches the files on disk count as checkpoints, so a crash
at any point leaves the previous checkpoint as the latest valid one and never a half-written one
that looks valid. Nothing here unpickles: DCP reads safetensors headers (JSON), the rest is JSON.
"""

from __future__ import annotations

import json
import os
import warnings
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed.checkpoint as dcp
from safetensors.torch import load_file, save_file
from torch import nn
from torch.distributed.checkpoint import HuggingFaceStorageReader, HuggingFaceStorageWriter
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)

from amylum.runtime.state import join_tensors, split_tensors

FORMAT_VERSION = 1
_STEP_DIR = re.compile(r"^step-(\d{8})$")
# Frozen parameters come from the model's own build (preset or from_pretrained), so a checkpoint
# holds only what training changes: the trainable parameters and their optimizer state.
_MODEL_OPTIONS = StateDictOptions(ignore_frozen_params=True)
# DCP warns that it runs single-process when no process group exists: that is this module's intent.
_SINGLE_PROCESS_WARNING = ".*torch.distributed is disabled, unavailable or uninitialized.*"


class CheckpointError(RuntimeError):
    pass


def _rank() -> int:
    return torch.distributed.get_rank() if torch.distributed.is_initialized() else 0


def _fsync_tree(root: Path) -> None:
    """fsync every file, then every folder bottom-up, so the rename publishes durable bytes."""
    for dirpath, _, filenames in os.walk(root, topdown=False):
        for name in filenames:
            fd = os.open(os.path.join(dirpath, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        _fsync_dir(Path(dirpath))


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _model_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """``{"model.<fqn>": t}`` of the trainable parameters, each storage once.

    Tied weights (e.g. an LLM's embedding and output head) are one tensor under two names;
    safetensors refuses aliases, and loading the first name restores both.
    """
    flat, seen = {}, set()
    for k, v in get_model_state_dict(model, options=_MODEL_OPTIONS).items():
        local = v.to_local() if hasattr(v, "to_local") else v
        key = (local.untyped_storage().data_ptr(), local.storage_offset(), tuple(local.shape))
        if local.numel() and key in seen:
            continue
        seen.add(key)
        flat[f"model.{k}"] = v
    return flat


def _tensor_state(model: nn.Module, optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], list[dict]]:
    """Flat ``{"model.<fqn>": t, "optim.<fqn>.<key>": t}`` plus the optimizer's param groups (JSON-able)."""
    flat = _model_state(model)
    osd = get_optimizer_state_dict(model, optimizer, options=_MODEL_OPTIONS)
    for fqn, per_param in osd["state"].items():
        for key, value in per_param.items():
            if not isinstance(value, torch.Tensor):
                raise CheckpointError(f"optimizer state {fqn}.{key} is a {type(value).__name__}, not a tensor")
            flat[f"optim.{fqn}.{key}"] = value
    return flat, osd["param_groups"]


@dataclass(frozen=True)
class CheckpointInfo:
    step: int
    path: Path


class CheckpointManager:
    """Saves to and finds checkpoints in ``root`` (usually ``RUN_DIR/checkpoints``)."""

    def __init__(self, root: str | Path, keep_last: int = 2) -> None:
        if keep_last < 1:
            raise ValueError(f"keep_last must be >= 1, got {keep_last}")
        self.root = Path(root)
        self.keep_last = keep_last

    # ----------------------------------------------------------------- discovery

    @staticmethod
    def is_valid(path: str | Path) -> bool:
        path = Path(path)
        manifest = path / "manifest.json"
        if not _STEP_DIR.match(path.name) or not manifest.is_file():
            return False
        try:
            files = json.loads(manifest.read_text())["files"]
        except (ValueError, KeyError):
            return False
        return all((path / rel).is_file() and (path / rel).stat().st_size == size for rel, size in files.items())

    def checkpoints(self) -> list[CheckpointInfo]:
        """Valid checkpoints, oldest first."""
        if not self.root.is_dir():
            return []
        found = []
        for p in self.root.iterdir():
            m = _STEP_DIR.match(p.name)
            if m and self.is_valid(p):
                found.append(CheckpointInfo(int(m.group(1)), p))
        return sorted(found, key=lambda c: c.step)

    def latest(self) -> CheckpointInfo | None:
        found = self.checkpoints()
        return found[-1] if found else None

    # ----------------------------------------------------------------- save

    def save(self, step: int, model: nn.Module, optimizer: torch.optim.Optimizer, extra: dict[str, Any]) -> Path:
        """Write the training state of ``step`` atomically; ``extra`` is this rank's non-parameter state."""
        final = self.root / f"step-{step:08d}"
        tmp = self.root / f".tmp-step-{step:08d}"
        distributed = torch.distributed.is_initialized()
        # Under torch.distributed every rank writes its shards into one folder: rank 0 alone
        # prepares and publishes it, with barriers between, so no rank renames a folder that
        # another is still writing.
        if _rank() == 0:
            if tmp.exists():  # left by a crash: never valid, safe to drop
                shutil.rmtree(tmp)
            tmp.mkdir(parents=True)
        if distributed:
            torch.distributed.barrier()

        flat, param_groups = _tensor_state(model, optimizer)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=_SINGLE_PROCESS_WARNING)
            dcp.save(flat, storage_writer=HuggingFaceStorageWriter(str(tmp / "state"), save_distributed=distributed))

        rank = _rank()
        tree, tensors = split_tensors({"step": step, "optimizer_param_groups": param_groups, **extra}, "extra")
        save_file(tensors, str(tmp / f"rank-{rank:05d}.safetensors"))
        (tmp / f"rank-{rank:05d}.json").write_text(json.dumps({"format": FORMAT_VERSION, "state": tree}))
        if distributed:
            torch.distributed.barrier()
        if rank == 0:
            self._publish(tmp, final, step)
            self._prune()
        if distributed:
            torch.distributed.barrier()
        return final

    def _publish(self, tmp: Path, final: Path, step: int) -> None:
        files = {
            str(p.relative_to(tmp)): p.stat().st_size for p in sorted(tmp.rglob("*")) if p.is_file()
        }
        (tmp / "manifest.json").write_text(json.dumps({"format": FORMAT_VERSION, "step": step, "files": files}))
        _fsync_tree(tmp)
        if final.exists():  # re-saving the same step (e.g. final save right after a periodic one)
            shutil.rmtree(final)
        os.rename(tmp, final)
        _fsync_dir(self.root)

    def _prune(self) -> None:
        for stale in self.root.glob(".tmp-step-*"):
            shutil.rmtree(stale, ignore_errors=True)
        for old in self.checkpoints()[: -self.keep_last]:
            shutil.rmtree(old.path)

    # ----------------------------------------------------------------- load

    @staticmethod
    def load(path: str | Path, model: nn.Module, optimizer: torch.optim.Optimizer | None = None) -> dict[str, Any]:
        """Restore model (and optimizer) in place from ``path``; return this rank's extra state.

        Without ``optimizer`` only the model is restored (for evaluation and export).
        """
        path = Path(path)
        if not CheckpointManager.is_valid(path):
            raise CheckpointError(
                f"{path} is not a complete checkpoint (missing or mismatched manifest.json); "
                "checkpoints are folders named step-NNNNNNNN written by amylum"
            )
        rank = _rank()
        if not (path / f"rank-{rank:05d}.json").is_file():
            saved = len(list(path.glob("rank-*.json")))
            raise CheckpointError(
                f"{path} was saved by {saved} processes and holds no per-rank state (data position, RNG) for "
                f"rank {rank}; resume on at most {saved} processes"
            )
        meta = json.loads((path / f"rank-{rank:05d}.json").read_text())
        if meta.get("format") != FORMAT_VERSION:
            raise CheckpointError(f"{path}: checkpoint format {meta.get('format')} != supported {FORMAT_VERSION}")
        extra = join_tensors(meta["state"], load_file(str(path / f"rank-{rank:05d}.safetensors")))

        target = _model_state(model)
        optim_sd = None
        if optimizer is not None:
            optim_sd = get_optimizer_state_dict(model, optimizer, options=_MODEL_OPTIONS)
            for fqn, per_param in optim_sd["state"].items():
                for key, value in per_param.items():
                    target[f"optim.{fqn}.{key}"] = value
        reader = HuggingFaceStorageReader(str(path / "state"))
        saved = set(reader.read_metadata().state_dict_metadata)
        missing = sorted(set(target) - saved)
        if missing:
            raise CheckpointError(
                f"{path}: checkpoint lacks {len(missing)} tensors the model needs, e.g. {missing[:3]}; "
                "was it saved from a different model or freeze setting?"
            )
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=_SINGLE_PROCESS_WARNING)
            dcp.load(target, storage_reader=reader)
        set_model_state_dict(model, {k[len("model."):]: v for k, v in target.items() if k.startswith("model.")},
                             options=StateDictOptions(ignore_frozen_params=True, strict=False))
        if optimizer is not None:
            state = {fqn: {key: target[f"optim.{fqn}.{key}"] for key in per_param}
                     for fqn, per_param in optim_sd["state"].items()}
            set_optimizer_state_dict(
                model, optimizer, {"state": state, "param_groups": extra["optimizer_param_groups"]},
                options=_MODEL_OPTIONS,
            )
        extra.pop("optimizer_param_groups")
        return extra

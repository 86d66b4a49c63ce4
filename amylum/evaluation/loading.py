"""Load a model and its tokenizer for standalone evaluation, from what training leaves behind.

Accepted as CHECKPOINT:

* an export folder (``amylum.json`` + ``llm/`` + ``encoders/`` + ``tokenizer/``), from
  ``amylum train`` or ``amylum export``;
* a training checkpoint (``RUN_DIR/checkpoints/step-NNNNNNNN``): the model is rebuilt from
  ``RUN_DIR/config.toml`` and the checkpoint's trainable weights are loaded into it;
* a run directory: its export if there is one, else its latest checkpoint.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch


@dataclass
class LoadedModel:
    model: Any
    tokenizer: Any
    source: str  # "export" or "checkpoint"
    path: Path
    run_dir: Path | None  # the run this model came from, when known
    step: int | None  # the training step, when known


def _step_of(path: Path) -> int | None:
    m = re.fullmatch(r"step-(\d+)", path.name)
    return int(m.group(1)) if m else None


def _from_export(path: Path, device: torch.device, attention: str) -> LoadedModel:
    from amylum.data.tokenizer import load_tokenizer
    from amylum.runtime.export import load_export

    tok_dir = path / "tokenizer"
    if not tok_dir.is_dir():
        raise FileNotFoundError(f"export {path} has no tokenizer/ folder; save the tokenizer there with save_pretrained")
    model = load_export(path, attention_backend=attention).to(device)
    run_dir = path.parent if (path.parent / "config.toml").is_file() else None
    step = None
    if run_dir is not None and (run_dir / "summary.json").is_file():
        import json

        step = json.loads((run_dir / "summary.json").read_text()).get("steps")
    return LoadedModel(model.eval(), load_tokenizer(tok_dir), "export", path, run_dir, step)


def _from_checkpoint(path: Path, device: torch.device) -> LoadedModel:
    from amylum.config import load_config
    from amylum.data.tokenizer import load_tokenizer
    from amylum.runtime.build import build_model, prepare_data
    from amylum.runtime.checkpoint import CheckpointManager

    run_dir = path.parent.parent
    config = run_dir / "config.toml"
    if not config.is_file():
        raise FileNotFoundError(f"checkpoint {path}: expected the run's config at {config} to rebuild the model")
    cfg = load_config(config)
    tokenizer = load_tokenizer(prepare_data(cfg).tokenizer)
    model = build_model(cfg, vocab_size=len(tokenizer), device=device)
    CheckpointManager.load(path, model)
    return LoadedModel(model.eval(), tokenizer, "checkpoint", path, run_dir, _step_of(path))


def load_for_eval(path: str | Path, device: str | torch.device = "cpu", attention: str = "reference") -> LoadedModel:
    path = Path(path)
    device = torch.device(device)
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist (expected an export, a checkpoint or a run directory)")
    if (path / "amylum.json").is_file():
        return _from_export(path, device, attention)
    if (path / "manifest.json").is_file() and _step_of(path) is not None:
        return _from_checkpoint(path, device)
    if (path / "config.toml").is_file():
        if (path / "export" / "amylum.json").is_file():
            return _from_export(path / "export", device, attention)
        from amylum.runtime.checkpoint import CheckpointManager

        latest = CheckpointManager(path / "checkpoints").latest()
        if latest is not None:
            return _from_checkpoint(Path(latest.path), device)
        raise FileNotFoundError(f"run directory {path} has neither export/ nor a complete checkpoint")
    raise ValueError(f"{path} is not an amylum export (amylum.json), checkpoint (step-N/manifest.json) or run directory")

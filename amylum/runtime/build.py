"""From a resolved Config to the pieces a run needs: device, tokenizer, data, model, evaluator."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from amylum.config import Config, ConfigError

def resolve_device(cfg: Config) -> torch.device:
    want = cfg.job.device
    if want == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if want.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"job.device = {want!r} but no CUDA device is available (torch {torch.__version__})")
    return torch.device(want)


def check_config(cfg: Config) -> None:
    """Checks that need the preset table (cheap: configs only, no weights), before anything is built."""
    from amylum.models import list_presets, preset_configs

    if cfg.model.preset not in list_presets():
        raise ConfigError(f"model.preset = {cfg.model.preset!r}; known presets: {', '.join(list_presets())}")
    modalities = set(preset_configs(cfg.model.preset)) - {"llm"}
    if cfg.data.demo == "valm" and "audio" not in modalities:
        raise ConfigError(f"data.demo = 'valm' needs an audio encoder; preset {cfg.model.preset!r} has {sorted(modalities)} "
                          "(use --model.preset=tiny-valm)")
    if cfg.data.demo in ("vlm", "valm") and "vision" not in modalities:
        raise ConfigError(f"the {cfg.data.demo} demo needs a vision encoder; preset {cfg.model.preset!r} has none")
    if cfg.model.llm == "lora":
        try:
            import peft  # noqa: F401
        except ImportError as e:
            raise ConfigError("model.llm = 'lora' needs peft: pip install 'amylum[lora]'") from e
    from amylum.runtime.evaluation import check_suite

    check_suite(cfg)


def demo_kind(cfg: Config) -> str:
    """The demo matching the preset's modalities when ``data.demo = "auto"``."""
    if cfg.data.demo != "auto":
        return cfg.data.demo
    from amylum.models import preset_configs

    return "valm" if "audio" in preset_configs(cfg.model.preset) else "vlm"


@dataclass
class DataPaths:
    train: Path
    eval: Path | None
    tokenizer: Path


def prepare_data(cfg: Config) -> DataPaths:
    """The demo is generated into RUN_DIR/data once (regenerated if its parameters change)."""
    d = cfg.data
    kind = demo_kind(cfg)
    if kind == "none":
        return DataPaths(Path(d.path), Path(d.eval_path) if d.eval_path else None, Path(d.tokenizer))
    root = Path(cfg.job.run_dir) / "data"
    want = {"kind": kind, "seed": cfg.job.seed, "n_train": d.n_train, "n_eval": d.n_eval}
    meta = root / "meta.json"
    have = json.loads(meta.read_text()) if meta.is_file() else {}
    if any(have.get(k) != v for k, v in want.items()) or not (root / "tokenizer").is_dir():
        from amylum.data.demo import make_demo_dataset

        make_demo_dataset(root, kind=kind, n_train=d.n_train, n_eval=d.n_eval, seed=cfg.job.seed)
    return DataPaths(root / "train.jsonl", (root / "eval.jsonl") if d.n_eval else None, root / "tokenizer")


def build_model(cfg: Config, vocab_size: int, device: torch.device) -> nn.Module:
    from amylum.models import BranchFreeze, FreezeSpec, apply_freeze, build_preset

    model = build_preset(
        cfg.model.preset, vocab_size=vocab_size, device=device, seed=cfg.job.seed,
        attention_backend=cfg.model.attention,
    )
    model.last_block_targets_only = cfg.model.last_block_targets_only
    branch = BranchFreeze(encoder=cfg.model.encoders, projector=cfg.model.projectors)
    apply_freeze(model, FreezeSpec(llm=cfg.model.llm, encoders={name: branch for name in model.encoders}))
    return model


@dataclass
class RunParts:
    device: torch.device
    model: nn.Module
    train_loader: Any
    evaluator: Any  # amylum.evaluation.Evaluator, or None without held-out data or suite
    tokenizer: Any
    paths: DataPaths


def build_train_loader(cfg: Config, dataset, model: nn.Module, rank: int = 0, world_size: int = 1, profile=None):
    """The training loader of DP replica ``rank`` of ``world_size``; with ``data.balance`` set, one
    step's ``grad_accum`` micro-batches per replica are balanced by work estimated from the records
    and the model's cost (before loading). Call it before the model is wrapped for parallelism.
    ``profile``: a pipeline's load profile (``amylum.planner.load_profile.profile_from_plan``)."""
    from amylum.data.dataset import ResumableLoader

    t, d = cfg.training, cfg.data
    if d.balance == "none":
        if profile is not None:
            raise ConfigError("a load profile needs data.balance = 'hierarchical'")
        return ResumableLoader(dataset, batch_size=t.batch_size, seed=cfg.job.seed, max_length=d.max_length,
                               rank=rank, world_size=world_size)
    from amylum.planner.workload import coefficients_from_model

    global_batch = t.batch_size * t.grad_accum * world_size
    if global_batch > len(dataset):
        raise ConfigError(f"data.balance = {d.balance!r}: a step's global batch (training.batch_size × "
                          f"training.grad_accum × {world_size} replicas = {global_batch}) exceeds the "
                          f"{len(dataset)} training samples")
    coef = coefficients_from_model(model, mask="causal" if cfg.model.attention == "hf" else "multimodal")
    return ResumableLoader(dataset, batch_size=t.batch_size, seed=cfg.job.seed, max_length=d.max_length,
                           rank=rank, world_size=world_size, balance=d.balance, microbatches=t.grad_accum,
                           work=dataset.work_table(coef), profile=profile)


def check_flex_is_compiled(cfg: Config, device: torch.device, *, compiled: bool) -> None:
    """Refuse a flex attention backend on CUDA when the model's blocks will not be compiled.

    Seen on an H100 (torch 2.11, 2026-11-25): eager model code calling the compiled
    FlexAttention kernel under the trainer's bf16 autocast fails inside inductor
    (NoValidChoicesError); inside compiled blocks the same backend trains. Under torchrun the
    failure would come at the first step on every rank, so it is refused before any group starts.
    """
    from amylum.attention import resolve_backend

    if device.type != "cuda" or compiled or resolve_backend(cfg.model.attention) not in ("flex", "flex-flash"):
        return
    if cfg.model.compile:  # asked for, but this path does not compile (torchrun runs)
        raise ValueError(
            f"model.attention={cfg.model.attention!r} on CUDA runs only from compiled blocks, and torchrun runs do "
            "not compile blocks yet (model.compile is for one process); use model.attention='reference' or 'hf'"
        )
    raise ValueError(
        f"model.attention={cfg.model.attention!r} on CUDA needs model.compile=true (FlexAttention is run from "
        "compiled blocks); or use model.attention='reference'"
    )


def build_run(cfg: Config) -> RunParts:
    from amylum.data.dataset import MultimodalDataset
    from amylum.data.processor import MultimodalProcessor
    from amylum.data.tokenizer import load_tokenizer
    from amylum.runtime.evaluation import make_evaluator

    device = resolve_device(cfg)
    check_flex_is_compiled(cfg, device, compiled=cfg.model.compile)
    paths = prepare_data(cfg)
    tokenizer = load_tokenizer(paths.tokenizer)
    model = build_model(cfg, vocab_size=len(tokenizer), device=device)
    if cfg.model.compile and device.type == "cuda":
        from amylum.parallel.blocks import compile_blocks

        # per block: compile time of one layer; HF's control flow stays eager
        compile_blocks(model, merge_matmuls=cfg.model.merge_matmuls)
    specs = model.modality_specs()
    processor = MultimodalProcessor(tokenizer, specs, max_length=cfg.data.max_length, on_error=cfg.data.on_error)
    train = build_train_loader(cfg, MultimodalDataset(paths.train, processor), model)
    evaluator = make_evaluator(cfg, paths.eval, tokenizer)
    return RunParts(device, model, train, evaluator, tokenizer, paths)

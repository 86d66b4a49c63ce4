"""From a resolved Config to the pieces a run needs: device, tokenizer, data, model, evaluator."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from amylum.config import Config, ConfigError

GENERATE_MAX_NEW_TOKENS = 8  # demo answers are a number or yes/no, plus <eos>


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
    branch = BranchFreeze(encoder=cfg.model.encoders, projector=cfg.model.projectors)
    apply_freeze(model, FreezeSpec(llm=cfg.model.llm, encoders={name: branch for name in model.encoders}))
    return model


def make_evaluator(cfg: Config, paths: DataPaths, tokenizer: Any, specs: dict) -> Callable[[nn.Module], dict[str, float]] | None:
    """Held-out answer accuracy by greedy decoding of the last reply of every eval record."""
    if paths.eval is None:
        return None
    from amylum.data.dataset import MultimodalDataset
    from amylum.data.demo import normalize_answer
    from amylum.data.processor import MultimodalProcessor

    processor = MultimodalProcessor(tokenizer, specs, max_length=cfg.data.max_length, mode="generate",
                                    on_error=cfg.data.on_error)
    dataset = MultimodalDataset(paths.eval, processor)
    n = len(dataset) if cfg.eval.max_samples == 0 else min(len(dataset), cfg.eval.max_samples)

    def evaluate(model: nn.Module) -> dict[str, float]:
        device = next(model.parameters()).device
        hits: dict[str, list[int]] = {}
        for start in range(0, n, cfg.eval.batch_size):
            samples = [s for s in (dataset[i] for i in range(start, min(n, start + cfg.eval.batch_size))) if s is not None]
            if not samples:
                continue
            batch = processor.collate(samples).to(device)
            generated = model.generate(batch, max_new_tokens=GENERATE_MAX_NEW_TOKENS,
                                       eos_token_id=processor.eos_token_id)
            for sample, ids in zip(samples, generated):
                ok = int(normalize_answer(processor.decode(ids)) == normalize_answer(sample.reference))
                hits.setdefault("all", []).append(ok)
                task = sample.extra.get("task")
                if task:
                    hits.setdefault(task, []).append(ok)
        if not hits:
            return {}
        scores = {"accuracy": sum(hits["all"]) / len(hits["all"])}
        scores.update({f"accuracy/{t}": sum(v) / len(v) for t, v in sorted(hits.items()) if t != "all"})
        return scores

    return evaluate


@dataclass
class RunParts:
    device: torch.device
    model: nn.Module
    train_loader: Any
    evaluator: Callable[[nn.Module], dict[str, float]] | None
    tokenizer: Any
    paths: DataPaths


def build_run(cfg: Config) -> RunParts:
    from amylum.data.dataset import MultimodalDataset, ResumableLoader
    from amylum.data.processor import MultimodalProcessor
    from amylum.data.tokenizer import load_tokenizer

    device = resolve_device(cfg)
    paths = prepare_data(cfg)
    tokenizer = load_tokenizer(paths.tokenizer)
    model = build_model(cfg, vocab_size=len(tokenizer), device=device)
    specs = model.modality_specs()
    processor = MultimodalProcessor(tokenizer, specs, max_length=cfg.data.max_length, on_error=cfg.data.on_error)
    train = ResumableLoader(MultimodalDataset(paths.train, processor), batch_size=cfg.training.batch_size,
                            seed=cfg.job.seed, max_length=cfg.data.max_length)
    evaluator = make_evaluator(cfg, paths, tokenizer, specs)
    return RunParts(device, model, train, evaluator, tokenizer, paths)

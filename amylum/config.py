"""Run configuration: one tree of typed dataclasses, loaded from TOML, overridden from the CLI.

A config is resolved in three steps, all before anything heavy (model, data) is touched:

1. defaults (the dataclasses below) — with no file and no override they describe the main demo job;
2. a TOML file, whose tables mirror the tree (``[training]``, ``[checkpoint]``, …);
3. command-line overrides ``--section.key=value``; the value is read as a TOML literal
   (``--training.lr=3e-4``, ``--model.frozen='["llm"]'``), or as a plain string for string fields.

Unknown sections or keys, wrong types and impossible combinations raise ``ConfigError`` naming
the key and where it came from. ``to_toml`` writes the resolved tree back (``--print-config`` and
``RUN_DIR/config.toml``), so a run directory always says exactly what ran.
"""

from __future__ import annotations

import dataclasses
import math
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from amylum.tomlfile import read_toml


class ConfigError(ValueError):
    """A configuration problem found before the run starts."""


def _help(text: str, **kwargs: Any) -> Any:
    return field(metadata={"help": text}, **kwargs)


@dataclass
class JobConfig:
    run_dir: str = _help(
        'Run directory (config, metrics, checkpoints, export, report); "" = runs/<model.preset>.', default=""
    )
    seed: int = _help("Seed for model init, data order and dropout.", default=0)
    device: str = _help('"auto" (cuda if available, else cpu), "cpu", "cuda" or "cuda:N".', default="auto")
    threads: int = _help(
        "Torch CPU threads when training on CPU (0 = torch's default). 1 is fastest for the tiny presets, "
        "whose matrices are too small to split, and avoids oversubscribing a shared machine.",
        default=1,
    )


@dataclass
class ModelConfig:
    preset: str = _help('Model preset: "tiny-vlm", "tiny-valm" or a real-size one (`amylum.models.list_presets()`).', default="tiny-vlm")
    llm: str = _help('LLM weights: "trainable", "frozen" or "lora" (peft adapters).', default="trainable")
    encoders: str = _help('Every encoder\'s weights: "trainable" or "frozen".', default="trainable")
    projectors: str = _help('Every projector\'s weights: "trainable" or "frozen".', default="trainable")
    attention: str = _help(
        'Attention backend of the LLM: "reference" (dense multimodal mask; CPU), "flex" (FlexAttention), '
        '"flex-flash" (FlexAttention on FlashAttention-4 kernels; needs flash-attn-4), "fast" (= flex), '
        '"decomposed", "hf" (model\'s own, causal). docs/attention.md.',
        default="reference",
    )
    compile: bool = _help(
        "On CUDA, torch.compile every transformer block, one block at a time; ignored on CPU. "
        "One process only (`amylum train`).",
        default=True,
    )
    merge_matmuls: bool = _help(
        "With model.compile: merge matmuls that share an input inside each compiled block (a GQA block's "
        "q/k/v projections and their gradients become one GEMM each; parallel/gemm_merge.py).",
        default=True,
    )
    last_block_targets_only: bool = _help(
        "The LLM's last block runs its MLP only on the rows the loss reads (answer tokens); the loss and "
        "gradients are unchanged. Off for an LLM whose MLP mixes rows. models/target_rows.py.",
        default=True,
    )


@dataclass
class DataConfig:
    demo: str = _help(
        '"auto" (demo matching the preset\'s modalities), "vlm", "valm", or "none" to read `path`.', default="auto"
    )
    path: str = _help("LLaVA-style records (.json/.jsonl); media paths are relative to its folder.", default="")
    eval_path: str = _help("Held-out records for evaluation (same format as `path`).", default="")
    tokenizer: str = _help("Tokenizer folder (required with `path`; the demo builds its own).", default="")
    n_train: int = _help("Demo: training samples to generate.", default=1500)
    n_eval: int = _help("Demo: held-out samples to generate.", default=200)
    max_length: int = _help("Longest sample in tokens; longer samples are an error, never truncated.", default=256)
    on_error: str = _help('Bad records: "raise" or "skip" (skipped records are counted and reported).', default="raise")
    balance: str = _help(
        'Microbatch assignment: "none" (shuffled batches of batch_size) or "hierarchical" (each step\'s '
        "samples (batch_size × grad_accum on one process; the plan's global batch under torchrun) split so "
        "encoder and LLM work per replica and per "
        'micro-batch are even, estimated from record metadata; docs/microbatching.md). The baselines '
        '"random", "dataset_order", "sorted_greedy" and "lpt" are accepted for comparisons.',
        default="none",
    )


@dataclass
class TrainingConfig:
    steps: int = _help("Optimizer steps.", default=600)
    batch_size: int = _help("Samples per micro-batch.", default=16)
    grad_accum: int = _help("Micro-batches per optimizer step.", default=1)
    lr: float = _help("Peak learning rate (AdamW).", default=1e-3)
    min_lr_ratio: float = _help("Cosine decays to lr * min_lr_ratio.", default=0.1)
    warmup_steps: int = _help("Linear warm-up steps.", default=30)
    weight_decay: float = _help("AdamW weight decay (not applied to biases and norms).", default=0.01)
    betas: list[float] = _help("AdamW betas.", default_factory=lambda: [0.9, 0.95])
    grad_clip: float = _help("Clip the global gradient norm to this value (0 = off).", default=1.0)
    precision: str = _help('"auto" (bf16 autocast on GPU, fp32 on CPU), "bf16" or "fp32".', default="auto")
    adamw_kernel: str = _help(
        '"torch" (torch\'s fused AdamW on GPU) or "triton" (amylum\'s one-launch AdamW, same update; CUDA '
        "only, runtime/adamw_triton.py).",
        default="torch",
    )
    deterministic: bool = _help("Use deterministic algorithms (exact resume on CPU).", default=True)


@dataclass
class EvalConfig:
    every: int = _help("Evaluate every N steps (and at the end); 0 = only at the end.", default=100)
    max_samples: int = _help(
        "Held-out samples per evaluation (0 = all), a fixed seeded subset; for the default suite "
        "(a suite file sets its own in [budget]).",
        default=200,
    )
    batch_size: int = _help("Samples per evaluation batch (default suite; a suite file sets its own).", default=50)
    suite: str = _help(
        'Evaluation suite TOML (tasks, metrics, slices, robustness; docs/evaluation.md); "" = the default suite '
        "on the held-out records (accuracy by modality, images, answer type and task).",
        default="",
    )
    max_seconds: float = _help(
        "Wall-clock budget of one evaluation (0 = none); cut evaluations are marked truncated. "
        "Overrides the suite's [budget] when > 0.",
        default=0.0,
    )
    robustness: bool = _help(
        "Run the suite's robustness pass (perturbed images, paraphrased prompts) on the final evaluation.",
        default=True,
    )


@dataclass
class CheckpointConfig:
    every: int = _help("Save the full training state every N steps (and at the end); 0 = off.", default=150)
    keep_last: int = _help("Checkpoints to keep (older ones are deleted after a successful save).", default=2)
    resume: str = _help(
        '"auto" (latest checkpoint in run_dir, if any), "never", or a checkpoint folder.', default="auto"
    )
    export: bool = _help("At the end, export HF-loadable safetensors to RUN_DIR/export.", default=True)


@dataclass
class MetricsConfig:
    log_every: int = _help("Log metrics every N steps.", default=20)
    tensorboard: bool = _help("Also write TensorBoard event files to RUN_DIR/tensorboard.", default=True)
    progress_bar: bool = _help("Show a tqdm progress bar.", default=True)
    report: bool = _help(
        "At the end, write RUN_DIR/report.html + report.json (the run report) and report.md with PNG plots.", default=True
    )
    peak_tflops: float = _help("Peak device TFLOP/s for MFU (0 = guess from the GPU name; never on CPU).", default=0.0)


@dataclass
class ParallelConfig:
    plan: str = _help(
        'Plan file (`amylum plan --out`) for runs under torchrun; "" = ask the planner for the launched world size.',
        default="")
    timeout_s: float = _help(
        "Timeout of every collective and point-to-point op under torchrun: a hung rank fails the job after it.",
        default=300.0)
    cp_policy: str = _help(
        "Context parallelism (plan stages with cp > 1): which tokens each CP rank holds, decided per microbatch "
        'from its mask: "balanced" (even whole-layer work), "contiguous" (locality, for the sparse exchange), '
        '"uniform", "zigzag", "makespan", "makespan_attn" (docs/context_parallel.md).',
        default="balanced")
    cp_exchange: str = _help(
        'How CP ranks get each other\'s keys and values: "allgather" (the whole sequence) or "sparse" (only the '
        "key blocks their queries may see, point to point).",
        default="allgather")
    cp_block: int = _help("CP token block in tokens (a kernel tile); a short microbatch shrinks it so every "
                          "CP rank gets a block.", default=128)
    cp_overlap: bool = _help(
        "CP attention attends to each rank's own keys while the K/V exchange is in flight, then to the received "
        "keys, merged exactly by log-sum-exp (the received keys' dK/dV return during the own part's backward). "
        "Off by default: tested exact on CPU (gloo, dense attention); on one GPU the two FlexAttention parts "
        "merged by LSE equal one call (tests/parallel/test_cp_overlap_gpu.py), but it is not timed and has not "
        "run across GPUs.",
        default=False)


@dataclass
class Config:
    job: JobConfig = field(default_factory=JobConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    parallel: ParallelConfig = field(default_factory=ParallelConfig)


# --------------------------------------------------------------------------- type checking


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """Return ``value`` as type ``tp`` or raise ``ConfigError``. Only lossless coercions (int → float)."""
    origin = typing.get_origin(tp)
    if origin is list:
        (item_tp,) = typing.get_args(tp)
        if not isinstance(value, list):
            raise ConfigError(f"{where}: expected a list of {_type_name(item_tp)}, got {value!r}")
        return [_coerce(v, item_tp, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin in (typing.Union, types.UnionType):
        raise TypeError(f"{where}: union types are not supported in the config tree")
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif tp is str:
        if isinstance(value, str):
            return value
    else:
        raise TypeError(f"{where}: unsupported config field type {tp}")
    raise ConfigError(f"{where}: expected {_type_name(tp)}, got {type(value).__name__} {value!r}")


def _section_types(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _apply_table(cfg: Config, table: dict[str, Any], source: str) -> None:
    sections = _section_types(Config)
    for section, values in table.items():
        if section not in sections:
            raise ConfigError(f"{source}: unknown section [{section}]; known: {', '.join(sections)}")
        if not isinstance(values, dict):
            raise ConfigError(f"{source}: [{section}] must be a table, got {values!r}")
        obj = getattr(cfg, section)
        hints = _section_types(type(obj))
        for key, value in values.items():
            if key not in hints:
                raise ConfigError(
                    f"{source}: unknown key {section}.{key}; known in [{section}]: {', '.join(hints)}"
                )
            setattr(obj, key, _coerce(value, hints[key], f"{source}: {section}.{key}"))


def _parse_override(arg: str) -> tuple[str, str, str]:
    if not arg.startswith("--") or "=" not in arg:
        raise ConfigError(f"override {arg!r} must look like --section.key=value")
    dotted, raw = arg[2:].split("=", 1)
    if dotted.count(".") != 1:
        raise ConfigError(f"override {arg!r}: the key must be section.key, e.g. --training.lr=1e-3")
    section, key = dotted.split(".")
    return section, key, raw


def _override_value(raw: str, tp: Any) -> Any:
    """Read an override value: a TOML literal, or the raw text for string fields."""
    if tp is str:
        return raw
    try:
        return tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        return raw  # _coerce then reports the type mismatch with the offending text


def normalize_overrides(argv: list[str]) -> list[str]:
    """Join ``--section.key value`` pairs into ``--section.key=value``."""
    out: list[str] = []
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg.startswith("--") and "=" not in arg and "." in arg and i + 1 < len(argv):
            out.append(f"{arg}={argv[i + 1]}")
            i += 2
        else:
            out.append(arg)
            i += 1
    return out


def load_config(path: str | Path | None = None, overrides: list[str] = ()) -> Config:
    """Defaults ← TOML file ← ``--section.key=value`` overrides, then ``validate``."""
    cfg = Config()
    if path is not None:
        table = read_toml(path, "config file", ConfigError)
        _apply_table(cfg, table, str(path))
    sections = _section_types(Config)
    for arg in normalize_overrides(list(overrides)):
        section, key, raw = _parse_override(arg)
        if section not in sections:
            raise ConfigError(f"{arg}: unknown section {section!r}; known: {', '.join(sections)}")
        hints = _section_types(type(getattr(cfg, section)))
        if key not in hints:
            raise ConfigError(f"{arg}: unknown key {section}.{key}; known in [{section}]: {', '.join(hints)}")
        _apply_table(cfg, {section: {key: _override_value(raw, hints[key])}}, "command line")
    validate(cfg)
    return cfg


# --------------------------------------------------------------------------- validation


def _choice(value: str, allowed: tuple[str, ...], key: str) -> None:
    if value not in allowed:
        raise ConfigError(f"{key} = {value!r}; expected one of {', '.join(map(repr, allowed))}")


def _positive(value: float, key: str, allow_zero: bool = False) -> None:
    if not math.isfinite(value) or value < 0 or (value == 0 and not allow_zero):
        raise ConfigError(f"{key} = {value!r}; must be {'>= 0' if allow_zero else '> 0'}")


def validate(cfg: Config) -> None:
    """Check values and combinations; cheap, touches no model or data."""
    t, d, c, e, m = cfg.training, cfg.data, cfg.checkpoint, cfg.eval, cfg.metrics
    if not cfg.job.run_dir:
        cfg.job.run_dir = str(Path("runs") / cfg.model.preset)
    if not (cfg.job.device in ("auto", "cpu", "cuda") or cfg.job.device.startswith("cuda:")):
        raise ConfigError(f"job.device = {cfg.job.device!r}; expected auto, cpu, cuda or cuda:N")
    _positive(cfg.job.threads, "job.threads", allow_zero=True)
    for key in ("steps", "batch_size", "grad_accum"):
        _positive(getattr(t, key), f"training.{key}")
    _positive(t.lr, "training.lr")
    _positive(t.warmup_steps, "training.warmup_steps", allow_zero=True)
    _positive(t.weight_decay, "training.weight_decay", allow_zero=True)
    _positive(t.grad_clip, "training.grad_clip", allow_zero=True)
    if not 0 <= t.min_lr_ratio <= 1:
        raise ConfigError(f"training.min_lr_ratio = {t.min_lr_ratio}; must be in [0, 1]")
    if len(t.betas) != 2 or not all(0 <= b < 1 for b in t.betas):
        raise ConfigError(f"training.betas = {t.betas}; expected two values in [0, 1)")
    _choice(t.precision, ("auto", "bf16", "fp32"), "training.precision")
    _choice(t.adamw_kernel, ("torch", "triton"), "training.adamw_kernel")
    if t.adamw_kernel == "triton" and cfg.job.device == "cpu":
        raise ConfigError("training.adamw_kernel = 'triton' needs a GPU; job.device is 'cpu' (use 'torch')")
    if t.precision == "bf16" and cfg.job.device == "cpu":
        raise ConfigError("training.precision = 'bf16' needs a GPU; job.device is 'cpu' (use 'auto' or 'fp32')")
    _choice(d.demo, ("auto", "vlm", "valm", "none"), "data.demo")
    _choice(d.on_error, ("raise", "skip"), "data.on_error")
    from amylum.planner.microbatch import POLICIES  # the assignment policies live with the planner

    _choice(d.balance, ("none", *POLICIES), "data.balance")
    if d.demo == "none":
        if not d.path:
            raise ConfigError("data.demo = 'none' needs data.path (LLaVA-style records)")
        if not d.tokenizer:
            raise ConfigError("data.path is set but data.tokenizer is not: real data needs a tokenizer folder")
        for key in ("path", "eval_path", "tokenizer"):
            value = getattr(d, key)
            if value and not Path(value).exists():
                raise ConfigError(f"data.{key}: {value} does not exist")
    elif d.path:
        raise ConfigError(f"data.path is set but data.demo = {d.demo!r}; set --data.demo=none to train on your records")
    if d.demo != "none":
        _positive(d.n_train, "data.n_train")
        _positive(d.n_eval, "data.n_eval", allow_zero=True)
    _positive(d.max_length, "data.max_length")
    _positive(e.every, "eval.every", allow_zero=True)
    _positive(e.max_samples, "eval.max_samples", allow_zero=True)
    _positive(e.batch_size, "eval.batch_size")
    _positive(e.max_seconds, "eval.max_seconds", allow_zero=True)
    if e.suite and not Path(e.suite).is_file():
        raise ConfigError(f"eval.suite: {e.suite} does not exist (a suite TOML; see docs/evaluation.md)")
    _positive(c.every, "checkpoint.every", allow_zero=True)
    _positive(c.keep_last, "checkpoint.keep_last")
    if c.resume not in ("auto", "never") and not Path(c.resume).is_dir():
        raise ConfigError(f"checkpoint.resume = {c.resume!r}: not 'auto', 'never' or an existing checkpoint folder")
    _positive(m.log_every, "metrics.log_every")
    _positive(cfg.parallel.timeout_s, "parallel.timeout_s")
    from amylum.planner.cp_policies import POLICIES as CP_POLICIES

    _choice(cfg.parallel.cp_policy, CP_POLICIES, "parallel.cp_policy")
    _choice(cfg.parallel.cp_exchange, ("allgather", "sparse"), "parallel.cp_exchange")  # parallel.cp_exchange.EXCHANGES
    _positive(cfg.parallel.cp_block, "parallel.cp_block")
    if cfg.parallel.plan and not Path(cfg.parallel.plan).is_file():
        raise ConfigError(f"parallel.plan: {cfg.parallel.plan} does not exist (a plan file from `amylum plan`)")
    _positive(m.peak_tflops, "metrics.peak_tflops", allow_zero=True)
    _choice(cfg.model.llm, ("trainable", "frozen", "lora"), "model.llm")
    _choice(cfg.model.encoders, ("trainable", "frozen"), "model.encoders")
    _choice(cfg.model.projectors, ("trainable", "frozen"), "model.projectors")
    if (cfg.model.llm, cfg.model.encoders, cfg.model.projectors) == ("frozen", "frozen", "frozen"):
        raise ConfigError("model.llm, model.encoders and model.projectors are all frozen: nothing would train")


# --------------------------------------------------------------------------- output


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(f"cannot write {value!r} as TOML")


def to_toml(cfg: Config) -> str:
    """The resolved config as TOML; ``load_config`` of this text gives back an equal config."""
    lines: list[str] = []
    for section in dataclasses.fields(cfg):
        lines.append(f"[{section.name}]")
        for f in dataclasses.fields(getattr(cfg, section.name)):
            lines.append(f"{f.name} = {_toml_value(getattr(getattr(cfg, section.name), f.name))}")
        lines.append("")
    return "\n".join(lines)


def reference() -> str:
    """Every key with its type, default and meaning (CLI help and the README's reference)."""
    lines: list[str] = []
    for section in dataclasses.fields(Config):
        obj = section.default_factory()  # type: ignore[misc]
        hints = _section_types(type(obj))
        lines.append(f"[{section.name}]")
        for f in dataclasses.fields(obj):
            default = _toml_value(getattr(obj, f.name))
            lines.append(f"  {f.name} ({_type_name(hints[f.name])}, default {default}): {f.metadata.get('help', '')}")
    return "\n".join(lines)


def to_dict(cfg: Config) -> dict[str, Any]:
    return dataclasses.asdict(cfg)

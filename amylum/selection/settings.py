"""``amylum select`` configuration: one TOML file → :class:`SelectionSettings`.

Defaults are Mordal's constants (reference/mordal.md): t_ve = 0.7, t_llm = 0.8, a 10-step
warm-up projector, successive halving from 3 % of the data with η = 2 up to R = 1/8 until
3 clusters remain, scaling prediction with p = 3 points and fit loss δ = 5e-5.
Unknown keys and impossible values are ``ConfigError``s, raised before anything is built.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from amylum.config import ConfigError
from amylum.selection.zoo import Component, component_from_dict
from amylum.tomlfile import read_toml


@dataclass
class JobSettings:
    out_dir: str = "runs/select"
    seed: int = 0
    device: str = "cpu"
    threads: int = 1


@dataclass
class DataSettings:
    demo: str = "vlm"  # "vlm" = generated digits demo; "none" = read path / eval_path / tokenizer
    path: str = ""  # alignment records (LLaVA-style)
    eval_path: str = ""  # target-task records
    tokenizer: str = ""
    n_train: int = 600
    n_eval: int = 100
    max_length: int = 256
    metric: str = "accuracy"  # "accuracy", "accuracy/<task>" (higher is better) or "loss" (lower is better)
    eval_samples: int = 0  # target-task records per evaluation (0 = all)
    eval_batch_size: int = 50


@dataclass
class TrainingSettings:
    batch_size: int = 8
    lr: float = 2e-3
    warmup_steps: int = 5
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    epochs: float = 1.0  # "full data" = this many passes over the alignment data
    full_steps: int = 0  # overrides epochs when > 0
    llm: str = "trainable"  # trainable | frozen | lora
    encoders: str = "frozen"  # frozen | trainable
    projector: str = "mlp"
    attention: str = "reference"


@dataclass
class BudgetSettings:
    steps: int = 0  # optimizer steps over all candidates (0 = unlimited)
    gpu_hours: float = 0.0  # device-hours of training (0 = unlimited)


@dataclass
class ClusteringSettings:
    t_ve: float = 0.7
    t_llm: float = 0.8
    threshold_kind: str = "similarity"  # t is a CKA a pair must reach; "distance": a cut on 1 − CKA
    linkage: str = "average"
    cka_samples: int = 64  # task inputs the representations are compared on
    cka_batch_size: int = 0  # 0 = exact linear CKA; > 0 = minibatch CKA (unbiased HSIC per batch)
    unbiased: bool = False
    warmup_steps: int = 10  # projector warm-up before comparing LLMs


@dataclass
class HalvingSettings:
    initial_fraction: float = 0.03
    eta: float = 2.0
    max_fraction: float = 0.125
    min_survivors: int = 3


@dataclass
class ScalingSettings:
    start_fraction: float = 0.125
    factor: float = 2.0
    min_points: int = 3
    max_loss: float = 5e-5
    max_fraction: float = 1.0  # intra-cluster training never goes past this fraction


@dataclass
class SelectionSettings:
    job: JobSettings = field(default_factory=JobSettings)
    data: DataSettings = field(default_factory=DataSettings)
    training: TrainingSettings = field(default_factory=TrainingSettings)
    budget: BudgetSettings = field(default_factory=BudgetSettings)
    clustering: ClusteringSettings = field(default_factory=ClusteringSettings)
    halving: HalvingSettings = field(default_factory=HalvingSettings)
    scaling: ScalingSettings = field(default_factory=ScalingSettings)
    encoders: list[Component] = field(default_factory=list)
    llms: list[Component] = field(default_factory=list)


_SECTIONS = ("job", "data", "training", "budget", "clustering", "halving", "scaling")


def _apply(section: Any, table: dict, where: str) -> None:
    fields = {f.name: f for f in dataclasses.fields(section)}
    for key, value in table.items():
        if key not in fields:
            raise ConfigError(f"[{where}] has no key {key!r}; known: {', '.join(fields)}")
        want = type(getattr(section, key))
        if want is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if not isinstance(value, want) or (want is int and isinstance(value, bool)):
            raise ConfigError(f"[{where}] {key} must be {want.__name__}, got {value!r}")
        setattr(section, key, value)


def settings_from_dict(data: dict[str, Any]) -> SelectionSettings:
    s = SelectionSettings()
    unknown = set(data) - set(_SECTIONS) - {"encoders", "llms"}
    if unknown:
        raise ConfigError(f"unknown sections {sorted(unknown)}; known: {', '.join(_SECTIONS)}, encoders, llms")
    for name in _SECTIONS:
        table = data.get(name, {})
        if not isinstance(table, dict):
            raise ConfigError(f"[{name}] must be a table")
        _apply(getattr(s, name), table, name)
    for key, role in (("encoders", "encoder"), ("llms", "llm")):
        entries = data.get(key, [])
        if not isinstance(entries, list):
            raise ConfigError(f"{key} must be an array of tables ([[{key}]])")
        try:
            getattr(s, key).extend(component_from_dict(e, role, f"[[{key}]] #{i + 1}") for i, e in enumerate(entries))
        except (TypeError, ValueError) as e:
            raise ConfigError(str(e)) from None
    validate(s)
    return s


def load_settings(path: str | Path, overrides: dict[str, dict[str, Any]] | None = None) -> SelectionSettings:
    data = read_toml(path, "selection config", ConfigError)
    for section, table in (overrides or {}).items():
        data.setdefault(section, {}).update(table)
    return settings_from_dict(data)


def validate(s: SelectionSettings) -> None:
    def need(ok: bool, msg: str) -> None:
        if not ok:
            raise ConfigError(msg)

    need(bool(s.encoders) and bool(s.llms), "the zoo needs at least one [[encoders]] and one [[llms]] entry")
    for group in (s.encoders, s.llms):
        names = [c.name for c in group]
        need(len(set(names)) == len(names), f"candidate names must be distinct, got {names}")
        need(all("+" not in n and "/" not in n for n in names), f"candidate names may not contain '+' or '/': {names}")
    need(s.data.demo in ("vlm", "none"), f"data.demo must be 'vlm' or 'none', got {s.data.demo!r}")
    if s.data.demo == "none":
        need(bool(s.data.path and s.data.eval_path and s.data.tokenizer),
             "data.demo = 'none' needs data.path (alignment), data.eval_path (task) and data.tokenizer")
        for key in ("path", "eval_path", "tokenizer"):
            need(Path(getattr(s.data, key)).exists(), f"data.{key} = {getattr(s.data, key)!r} does not exist")
    need(s.data.metric in ("accuracy", "loss") or s.data.metric.startswith("accuracy/"),
         f"data.metric must be 'accuracy', 'accuracy/<task>' or 'loss', got {s.data.metric!r}")
    need(s.training.llm in ("trainable", "frozen", "lora"), f"training.llm must be trainable, frozen or lora, got {s.training.llm!r}")
    need(s.training.encoders in ("trainable", "frozen"), f"training.encoders must be trainable or frozen, got {s.training.encoders!r}")
    need(s.training.batch_size >= 1 and s.training.lr > 0, "training.batch_size must be ≥ 1 and training.lr > 0")
    need(s.budget.steps >= 0 and s.budget.gpu_hours >= 0, "budget.steps and budget.gpu_hours must be ≥ 0")
    c, h, sc = s.clustering, s.halving, s.scaling
    need(0 <= c.t_ve <= 1 and 0 <= c.t_llm <= 1, "clustering thresholds t_ve and t_llm lie in [0, 1]")
    need(c.threshold_kind in ("similarity", "distance"), "clustering.threshold_kind must be 'similarity' or 'distance'")
    need(c.cka_samples >= 4, "clustering.cka_samples must be ≥ 4")
    need(c.cka_batch_size == 0 or c.cka_batch_size >= 4, "clustering.cka_batch_size must be 0 (exact) or ≥ 4")
    need(c.warmup_steps >= 0, "clustering.warmup_steps must be ≥ 0")
    need(0 < h.initial_fraction <= h.max_fraction <= 1, "need 0 < halving.initial_fraction ≤ halving.max_fraction ≤ 1")
    need(h.eta > 1 and h.min_survivors >= 1, "halving.eta must be > 1 and halving.min_survivors ≥ 1")
    need(0 < sc.start_fraction <= sc.max_fraction <= 1 and sc.factor > 1, "need 0 < scaling.start_fraction ≤ max_fraction ≤ 1, factor > 1")
    need(sc.min_points >= 3, "scaling.min_points must be ≥ 3 (two points always fit a line exactly)")
    need(sc.max_loss > 0, "scaling.max_loss must be > 0")


def encoder_by_name(s: SelectionSettings) -> dict[str, Component]:
    return {c.name: c for c in s.encoders}


def llm_by_name(s: SelectionSettings) -> dict[str, Component]:
    return {c.name: c for c in s.llms}

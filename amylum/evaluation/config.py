"""The evaluation suite: tasks, slices, robustness pass and budget, read from TOML.

A suite file looks like::

    [budget]
    max_samples = 200        # per task and evaluation (0 = all); the same items every time
    max_seconds = 0          # wall-clock budget of one evaluation (0 = none); the rest is skipped
    batch_size = 16

    [[tasks]]
    name = "heldout"
    data = "eval.jsonl"      # LLaVA-style records, like training; relative to this file
    prompt = "{prompt}"      # template for the last user turn: {prompt}, {choices}, {<record key>}
    metrics = ["accuracy", "bleu", { type = "exact_match", name = "em_strict", normalize = "none" }]
    max_new_tokens = 8
    temperature = 0.0        # 0 = greedy; > 0 samples (top_p, seed)

    [[slices]]
    name = "audio_length"
    by = "audio_seconds"     # modality | num_images | num_audio | audio_seconds | prompt_tokens | answer_type | field:KEY
    edges = [0.3]

    [robustness]
    perturbations = ["image_noise", "image_blur", { type = "image_crop", keep = 0.7 }, "paraphrase"]
    every = 0                # run it every N steps; 0 = only on final evaluations

Unknown keys are errors that name the key (a typo must not silently evaluate something else).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from amylum.evaluation.generate import Sampling
from amylum.tomlfile import read_toml


class EvalConfigError(ValueError):
    """A problem in an evaluation suite, found before any model runs."""


SLICE_KINDS = ("modality", "num_images", "num_audio", "audio_seconds", "prompt_tokens", "answer_type")
PERTURBATIONS = ("image_noise", "image_blur", "image_crop", "audio_noise", "paraphrase")
DEFAULT_PARAPHRASES = (
    "{prompt}",
    "Question: {prompt}",
    "{prompt} Answer briefly.",
    "Please answer the following. {prompt}",
)


@dataclass
class BudgetConfig:
    max_samples: int = 200
    max_seconds: float = 0.0
    batch_size: int = 16
    seed: int = 0  # which items are kept when a task has more than max_samples


@dataclass
class TaskConfig:
    name: str
    data: Path
    metrics: list[Any]
    media_root: Path | None = None
    prompt: str = "{prompt}"
    max_new_tokens: int = 16
    sampling: Sampling = field(default_factory=Sampling)
    slices: list[str] | None = None  # slice names; None = every declared slice
    max_samples: int | None = None  # overrides the budget's


@dataclass
class SliceConfig:
    name: str
    by: str
    edges: list[float] = field(default_factory=list)  # for numeric kinds: bucket boundaries
    max_count: int = 3  # num_images / num_audio: counts above are one "N+" bucket


@dataclass
class PerturbationConfig:
    type: str
    name: str
    options: dict[str, Any] = field(default_factory=dict)


@dataclass
class RobustnessConfig:
    perturbations: list[PerturbationConfig] = field(default_factory=list)
    every: int = 0
    max_samples: int | None = None
    seed: int = 0


@dataclass
class SuiteConfig:
    tasks: list[TaskConfig]
    slices: list[SliceConfig] = field(default_factory=list)
    robustness: RobustnessConfig = field(default_factory=RobustnessConfig)
    budget: BudgetConfig = field(default_factory=BudgetConfig)
    source: str = "<dict>"


def _table(obj: Any, where: str) -> dict[str, Any]:
    if not isinstance(obj, dict):
        raise EvalConfigError(f"{where} must be a table, got {obj!r}")
    return dict(obj)


def _take(table: dict[str, Any], key: str, types: type | tuple, where: str, default: Any = ...) -> Any:
    if key not in table:
        if default is ...:
            raise EvalConfigError(f"{where}: missing required key {key!r}")
        return default
    value = table.pop(key)
    if isinstance(value, bool) and bool not in (types if isinstance(types, tuple) else (types,)):
        raise EvalConfigError(f"{where}.{key}: expected {types}, got {value!r}")
    if not isinstance(value, types):
        raise EvalConfigError(f"{where}.{key}: expected {getattr(types, '__name__', types)}, got {value!r}")
    return value


def _no_rest(table: dict[str, Any], where: str, known: tuple[str, ...]) -> None:
    if table:
        raise EvalConfigError(f"{where}: unknown key(s) {sorted(table)}; known: {', '.join(known)}")


def _path(value: str, base: Path) -> Path:
    p = Path(value)
    return p if p.is_absolute() else base / p


def _budget(t: dict[str, Any], where: str) -> BudgetConfig:
    b = BudgetConfig(
        max_samples=_take(t, "max_samples", int, where, 200),
        max_seconds=float(_take(t, "max_seconds", (int, float), where, 0.0)),
        batch_size=_take(t, "batch_size", int, where, 16),
        seed=_take(t, "seed", int, where, 0),
    )
    _no_rest(t, where, ("max_samples", "max_seconds", "batch_size", "seed"))
    if b.max_samples < 0 or b.max_seconds < 0 or b.batch_size < 1:
        raise EvalConfigError(f"{where}: need max_samples >= 0, max_seconds >= 0, batch_size >= 1; got {b}")
    return b


def _task(t: dict[str, Any], where: str, base: Path) -> TaskConfig:
    from amylum.evaluation.metrics import build_metric

    name = _take(t, "name", str, where)
    where = f"{where} ({name!r})"
    if not name or "/" in name or "=" in name:
        raise EvalConfigError(f"{where}: task name must be non-empty without '/' or '='")
    metrics = _take(t, "metrics", list, where, ["accuracy"])
    if not metrics:
        raise EvalConfigError(f"{where}.metrics: a task needs at least one metric")
    for m in metrics:  # build once here so a bad metric fails before the run, naming the task
        try:
            build_metric(m)
        except (ValueError, TypeError, ImportError) as e:
            raise EvalConfigError(f"{where}.metrics: {e}") from e
    names = [build_metric(m).name for m in metrics]
    if len(set(names)) != len(names):
        raise EvalConfigError(f"{where}.metrics: names {names} repeat; give one of them a 'name'")
    media = _take(t, "media_root", str, where, "")
    slices = _take(t, "slices", list, where, None)
    max_samples = _take(t, "max_samples", int, where, None)
    try:
        sampling = Sampling(
            temperature=float(_take(t, "temperature", (int, float), where, 0.0)),
            top_p=float(_take(t, "top_p", (int, float), where, 1.0)),
            seed=_take(t, "seed", int, where, 0),
        )
    except ValueError as e:
        raise EvalConfigError(f"{where}: {e}") from e
    task = TaskConfig(
        name=name, data=_path(_take(t, "data", str, where), base), metrics=metrics,
        media_root=_path(media, base) if media else None, prompt=_take(t, "prompt", str, where, "{prompt}"),
        max_new_tokens=_take(t, "max_new_tokens", int, where, 16), sampling=sampling, slices=slices,
        max_samples=max_samples,
    )
    _no_rest(t, where, ("name", "data", "metrics", "media_root", "prompt", "max_new_tokens", "temperature",
                        "top_p", "seed", "slices", "max_samples"))
    if "{prompt}" not in task.prompt:
        raise EvalConfigError(f"{where}.prompt = {task.prompt!r} must contain {{prompt}} (the record's question)")
    if task.max_new_tokens < 1:
        raise EvalConfigError(f"{where}.max_new_tokens must be >= 1")
    return task


def _slice(t: dict[str, Any], where: str) -> SliceConfig:
    s = SliceConfig(
        name=_take(t, "name", str, where), by=_take(t, "by", str, where),
        edges=[float(x) for x in _take(t, "edges", list, where, [])], max_count=_take(t, "max_count", int, where, 3),
    )
    _no_rest(t, where, ("name", "by", "edges", "max_count"))
    if not s.name or "/" in s.name or "=" in s.name:
        raise EvalConfigError(f"{where}: slice name {s.name!r} must be non-empty without '/' or '='")
    if s.by not in SLICE_KINDS and not (s.by.startswith("field:") and len(s.by) > 6):
        raise EvalConfigError(f"{where} ({s.name!r}).by = {s.by!r}; expected one of {', '.join(SLICE_KINDS)} or field:KEY")
    if s.edges != sorted(set(s.edges)):
        raise EvalConfigError(f"{where} ({s.name!r}).edges must be strictly increasing, got {s.edges}")
    if s.by in ("audio_seconds", "prompt_tokens") and not s.edges:
        raise EvalConfigError(f"{where} ({s.name!r}): by = {s.by!r} needs bucket 'edges', e.g. [0.3, 1.0]")
    return s


def _perturbation(p: Any, where: str) -> PerturbationConfig:
    t = {"type": p} if isinstance(p, str) else _table(p, where)
    kind = _take(t, "type", str, where)
    if kind not in PERTURBATIONS:
        raise EvalConfigError(f"{where}.type = {kind!r}; expected one of {', '.join(PERTURBATIONS)}")
    name = _take(t, "name", str, where, kind)
    from amylum.evaluation.robustness import check_options

    try:
        options = check_options(kind, t)
    except ValueError as e:
        raise EvalConfigError(f"{where} ({name!r}): {e}") from e
    return PerturbationConfig(kind, name, options)


def _robustness(t: dict[str, Any], where: str) -> RobustnessConfig:
    perts = [_perturbation(p, f"{where}.perturbations[{i}]")
             for i, p in enumerate(_take(t, "perturbations", list, where, []))]
    r = RobustnessConfig(perturbations=perts, every=_take(t, "every", int, where, 0),
                         max_samples=_take(t, "max_samples", int, where, None), seed=_take(t, "seed", int, where, 0))
    _no_rest(t, where, ("perturbations", "every", "max_samples", "seed"))
    names = [p.name for p in perts]
    if len(set(names)) != len(names):
        raise EvalConfigError(f"{where}.perturbations: names {names} repeat; give one a 'name'")
    return r


def parse_suite(table: dict[str, Any], base_dir: str | Path = ".", source: str = "<dict>") -> SuiteConfig:
    t = _table(table, source)
    base = Path(base_dir)
    tasks = [_task(_table(x, f"{source}: tasks[{i}]"), f"{source}: tasks[{i}]", base)
             for i, x in enumerate(_take(t, "tasks", list, source))]
    if not tasks:
        raise EvalConfigError(f"{source}: no [[tasks]]")
    if len({x.name for x in tasks}) != len(tasks):
        raise EvalConfigError(f"{source}: task names repeat: {[x.name for x in tasks]}")
    slices = [_slice(_table(x, f"{source}: slices[{i}]"), f"{source}: slices[{i}]")
              for i, x in enumerate(_take(t, "slices", list, source, []))]
    if len({s.name for s in slices}) != len(slices):
        raise EvalConfigError(f"{source}: slice names repeat: {[s.name for s in slices]}")
    known = {s.name for s in slices}
    for task in tasks:
        missing = set(task.slices or ()) - known
        if missing:
            raise EvalConfigError(f"{source}: task {task.name!r} names undeclared slices {sorted(missing)}")
    suite = SuiteConfig(
        tasks=tasks, slices=slices,
        robustness=_robustness(_table(_take(t, "robustness", dict, source, {}), f"{source}: [robustness]"),
                               f"{source}: [robustness]"),
        budget=_budget(_table(_take(t, "budget", dict, source, {}), f"{source}: [budget]"), f"{source}: [budget]"),
        source=source,
    )
    _no_rest(t, source, ("tasks", "slices", "robustness", "budget"))
    return suite


def load_suite(path: str | Path) -> SuiteConfig:
    p = Path(path)
    return parse_suite(read_toml(p, "evaluation suite", EvalConfigError), p.parent, str(p))


def default_suite(eval_path: str | Path, *, max_samples: int = 200, batch_size: int = 16,
                  max_new_tokens: int = 8, robustness: bool = True) -> SuiteConfig:
    """The suite used when none is configured: answer accuracy on the held-out records, sliced
    by modality, images per sample, answer type and the records' ``task`` field, with a
    robustness pass (image noise, blur, crop; prompt paraphrase) on final evaluations."""
    table: dict[str, Any] = {
        "budget": {"max_samples": max_samples, "batch_size": batch_size},
        "tasks": [{"name": "heldout", "data": str(Path(eval_path).resolve()),
                   "metrics": ["accuracy", {"type": "exact_match", "name": "exact_match", "normalize": "none"}],
                   "max_new_tokens": max_new_tokens}],
        "slices": [{"name": "modality", "by": "modality"}, {"name": "images", "by": "num_images"},
                   {"name": "answer_type", "by": "answer_type"}, {"name": "task", "by": "field:task"}],
    }
    if robustness:
        table["robustness"] = {"perturbations": ["image_noise", "image_blur", "image_crop", "paraphrase"]}
    return parse_suite(table, ".", "default suite")

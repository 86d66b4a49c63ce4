"""Custom metrics named by import path: ``"my_pkg.my_module:my_metric"``.

The object at the path may be:

* a :class:`Metric` subclass — built with ``name`` and the options;
* a function ``fn(predictions: list[str], references: list[list[str]], **options)`` returning a
  float (a corpus score) or a list of floats (per-item scores; the value is their mean).

The function's ``version`` attribute (default ``"unversioned"``) goes into the score's metadata,
and the scorer is recorded as ``auto:custom:<import path>``.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from amylum.evaluation.metrics.base import EvalItem, Metric, MetricScore, mean_score


def import_object(path: str) -> Any:
    if ":" not in path:
        raise ValueError(f"custom metric {path!r} must be 'package.module:attribute'")
    module_name, attr = path.split(":", 1)
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise ValueError(f"custom metric {path!r}: cannot import module {module_name!r}: {e}") from e
    obj = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise ValueError(f"custom metric {path!r}: module {module_name!r} has no attribute {attr!r}")
        obj = getattr(obj, part)
    return obj


@dataclass
class FunctionMetric(Metric):
    path: str = ""
    fn: Callable[..., Any] | None = field(default=None, repr=False)

    @property
    def version(self) -> str:  # type: ignore[override]
        return str(getattr(self.fn, "version", "unversioned"))

    @property
    def scale(self) -> str:  # type: ignore[override]
        return str(getattr(self.fn, "scale", "unknown"))

    @property
    def scorer(self) -> str:
        return f"auto:custom:{self.path}"

    def compute(self, items: Sequence[EvalItem]) -> MetricScore:
        out = self.fn([it.prediction for it in items], [list(it.references) for it in items], **self.params)
        if isinstance(out, (int, float)):
            return MetricScore(float(out))
        if isinstance(out, Sequence) and len(out) == len(items) and all(isinstance(x, (int, float)) for x in out):
            return mean_score([float(x) for x in out])
        raise TypeError(
            f"custom metric {self.path!r} returned {type(out).__name__}; expected a float or one float per item "
            f"({len(items)})"
        )


def build_custom(name: str, path: str, params: dict[str, Any]) -> Metric:
    obj = import_object(path)
    if isinstance(obj, type) and issubclass(obj, Metric):
        return obj(name=name, params=dict(params))
    if callable(obj):
        return FunctionMetric(name=name, params=dict(params), path=path, fn=obj)
    raise TypeError(f"custom metric {path!r} is a {type(obj).__name__}, not a Metric subclass or a function")

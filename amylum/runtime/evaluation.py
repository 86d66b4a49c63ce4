"""The run's evaluator: the suite named by ``eval.suite``, or the default suite on the held-out records.

The trainer only knows ``evaluate(model, step, final=...)`` (``amylum.evaluation.Evaluator``);
this module turns the run config into that object, so ``amylum train`` and ``amylum eval``
evaluate exactly the same suite for the same config.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from amylum.config import Config, ConfigError

# Demo answers are a number or yes/no, plus <eos>; longer outputs are wrong anyway.
DEFAULT_MAX_NEW_TOKENS = 8


def check_suite(cfg: Config) -> None:
    """Parse ``eval.suite`` (cheap: no data, no model) so a bad suite fails before anything is built."""
    if not cfg.eval.suite:
        return
    from amylum.evaluation.config import EvalConfigError, load_suite

    try:
        load_suite(cfg.eval.suite)
    except EvalConfigError as e:
        raise ConfigError(f"eval.suite: {e}") from e


def run_suite(cfg: Config, eval_path: Path | None) -> Any:
    """The ``SuiteConfig`` a run evaluates, or None when there is nothing to evaluate.

    ``eval.max_samples`` and ``eval.batch_size`` shape the default suite only (a suite file has its
    own ``[budget]``); ``eval.max_seconds > 0`` and ``eval.robustness = false`` apply to both.
    """
    from amylum.evaluation.config import EvalConfigError, default_suite, load_suite

    e = cfg.eval
    if e.suite:
        try:
            suite = load_suite(e.suite)
        except EvalConfigError as err:
            raise ConfigError(f"eval.suite: {err}") from err
    elif eval_path is None:
        return None
    else:
        suite = default_suite(eval_path, max_samples=e.max_samples, batch_size=e.batch_size,
                              max_new_tokens=DEFAULT_MAX_NEW_TOKENS, robustness=e.robustness)
    if e.max_seconds > 0:
        suite.budget.max_seconds = e.max_seconds
    if not e.robustness:
        suite.robustness.perturbations = []
    return suite


def make_evaluator(cfg: Config, eval_path: Path | None, tokenizer: Any, out_dir: Path | None = None) -> Any:
    """``Evaluator`` writing to ``out_dir`` (default RUN_DIR/eval), or None without held-out data or suite."""
    suite = run_suite(cfg, eval_path)
    if suite is None:
        return None
    from amylum.evaluation import Evaluator

    out = out_dir if out_dir is not None else Path(cfg.job.run_dir) / "eval"
    return Evaluator(suite, tokenizer, max_length=cfg.data.max_length, out_dir=out)


def headline(scores: dict[str, float]) -> tuple[str, float] | None:
    """The score a one-line summary shows: the first task's overall accuracy (or first metric)."""
    overall = [(k, v) for k, v in scores.items() if k.count("/") == 1 and not k.endswith("/n")]
    for k, v in overall:
        if k.endswith("/accuracy"):
            return k, v
    return overall[0] if overall else None

"""Evaluation: tasks from config, metrics, slices, robustness, human review, run reports.

The trainer's hook is :class:`Evaluator`; ``amylum eval`` runs the same suite from a saved or
exported model; :func:`write_run_report` gathers a run directory into ``report.json`` + ``report.html``.
"""

from amylum.evaluation.config import EvalConfigError, SuiteConfig, default_suite, load_suite, parse_suite
from amylum.evaluation.evaluator import Evaluator
from amylum.evaluation.generate import Sampling, generate
from amylum.evaluation.results import EvalResults, flatten

__all__ = ["EvalConfigError", "EvalResults", "Evaluator", "Sampling", "SuiteConfig", "default_suite", "flatten",
           "generate", "load_suite", "parse_suite"]

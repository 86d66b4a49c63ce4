"""``amylum eval`` (standalone evaluation of a saved or exported model) and ``amylum eval-import``
(human annotations back into a step's results). The CLI calls ``register(subparsers)``."""

from __future__ import annotations

import argparse
import json
import tomllib
from pathlib import Path


def _suite(config: Path, max_samples: int | None):
    """An eval suite file ([[tasks]]), or a run config: its eval.suite, or the default suite on its held-out set."""
    from amylum.evaluation.config import load_suite

    try:
        table = tomllib.loads(config.read_text())
    except (OSError, tomllib.TOMLDecodeError) as e:
        raise SystemExit(f"amylum eval: cannot read CONFIG {config}: {e}") from None
    if "tasks" in table:
        suite = load_suite(config)
    else:
        from amylum.config import load_config
        from amylum.runtime.build import prepare_data
        from amylum.runtime.evaluation import run_suite

        cfg = load_config(config)
        # The same suite `amylum train` evaluates with this config (eval.suite, or the default one).
        suite = run_suite(cfg, None if cfg.eval.suite else prepare_data(cfg).eval)
        if suite is None:
            raise SystemExit(f"amylum eval: {config} is a run config without held-out data (data.eval_path / data.n_eval)")
    if max_samples is not None:
        suite.budget.max_samples = max_samples
    return suite


def _eval(args: argparse.Namespace, overrides: list[str]) -> int:
    from amylum.evaluation.evaluator import Evaluator, step_name
    from amylum.evaluation.loading import load_for_eval

    loaded = load_for_eval(args.checkpoint, device=args.device)
    suite = _suite(Path(args.config), args.max_samples)
    step = args.step if args.step is not None else loaded.step
    out = Path(args.out) if args.out else (loaded.run_dir / "eval-standalone" if loaded.run_dir else Path("eval-out"))
    evaluator = Evaluator(suite, loaded.tokenizer, max_length=args.max_length, out_dir=out)
    results = evaluator.evaluate(loaded.model, step=step, final=not args.no_robustness)
    for key, value in results.flat().items():
        if "/n/" not in key and not key.endswith("/n"):
            print(f"{key}\t{value:.4f}")
    print(f"results: {out / (step_name(step) + '.json')}")
    if args.review:
        from amylum.evaluation.review import export_review, read_predictions

        rows = read_predictions(out / "predictions" / f"{step_name(step)}.jsonl")
        html, jsonl = export_review(rows, out / "review" / step_name(step), n=args.review, seed=args.seed)
        print(f"human review: {html} (annotate {jsonl}, then `amylum eval-import`)")
    return 0


def _import(args: argparse.Namespace, overrides: list[str]) -> int:
    from amylum.evaluation.results import flatten
    from amylum.evaluation.review import attach_human_scores, load_annotations

    results_path = Path(args.results)
    results = json.loads(results_path.read_text())
    annotations, unjudged = load_annotations(args.annotations)
    if not annotations:
        raise SystemExit(f"amylum eval-import: {args.annotations} has no judged item ({unjudged} unjudged)")
    merged = attach_human_scores(results, annotations)
    out = Path(args.out) if args.out else results_path
    out.write_text(json.dumps(merged, indent=1) + "\n")
    for key, value in flatten(merged).items():
        if "/human:" in key:
            print(f"{key}\t{value:.4f}")
    print(f"{len(annotations)} judged, {unjudged} unjudged; written to {out}")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "eval", help="evaluate a saved or exported model on an evaluation suite",
        description="Run an evaluation suite (tasks, metrics, slices, robustness) on CHECKPOINT: an export "
        "folder, a training checkpoint (RUN/checkpoints/step-N) or a run directory. CONFIG is a suite TOML "
        "([[tasks]] …, see docs/evaluation.md) or a run config (evaluates its held-out set with the default suite).",
    )
    p.add_argument("checkpoint", help="export folder, checkpoint folder or run directory")
    p.add_argument("config", help="evaluation suite TOML, or a run config TOML")
    p.add_argument("--out", help="results folder (default: RUN_DIR/eval-standalone)")
    p.add_argument("--step", type=int, help="step to label the results with (default: from the checkpoint)")
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default cpu)")
    p.add_argument("--max-length", type=int, default=256, help="longest prompt in tokens (longer ones are skipped)")
    p.add_argument("--max-samples", type=int, help="override the suite's budget.max_samples (0 = all)")
    p.add_argument("--no-robustness", action="store_true", help="skip the robustness pass")
    p.add_argument("--review", type=int, default=0, metavar="N", help="export N predictions for human review")
    p.add_argument("--seed", type=int, default=0, help="seed of the human-review sample")
    p.set_defaults(func=_eval)

    p = subparsers.add_parser(
        "eval-import", help="import human annotations (review.jsonl) into a step's evaluation results",
        description="Adds human scores, labelled human:<annotator>, with their agreement with each automated "
        "metric, to RESULTS (RUN/eval/step-N.json); the run report then shows both.",
    )
    p.add_argument("results", help="a step's results file (step-NNNNNNNN.json)")
    p.add_argument("annotations", help="the annotated review.jsonl")
    p.add_argument("--out", help="write here instead of updating RESULTS in place")
    p.set_defaults(func=_import)

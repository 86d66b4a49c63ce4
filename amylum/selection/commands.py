"""``amylum select CONFIG.toml``: choose the best encoder × LLM pair for a task (Mordal)."""

from __future__ import annotations

import argparse


def _select(args: argparse.Namespace, overrides: list[str]) -> int:
    from amylum.selection.report import write_report
    from amylum.selection.search import run_search
    from amylum.selection.settings import load_settings

    extra = {}
    if args.out_dir:
        extra.setdefault("job", {})["out_dir"] = args.out_dir
    settings = load_settings(args.config, extra)
    result = run_search(settings)
    report = write_report(result, settings.job.out_dir)
    c = result.cost
    print(f"selected {result.selected}; {c['steps']} steps spent vs ~{c['grid_steps_estimate']} for a grid search "
          f"({c['step_ratio']}×); report {report}")
    return 0 if result.selected else 1


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "select", help="choose an encoder × LLM pair for a task (CKA clustering, successive halving, scaling fits)",
        description="Mordal-style selection over a zoo of vision encoders and LLMs; see docs/selection.md. "
        "Writes OUT/selection.json, OUT/report.md and OUT/search.png.",
    )
    p.add_argument("config", help="selection TOML (e.g. configs/select-demo.toml)")
    p.add_argument("--out-dir", help="override job.out_dir")
    p.set_defaults(func=_select)

"""Subcommands of the runtime: ``train``, ``export``, ``report``."""

from __future__ import annotations

import argparse
from pathlib import Path

from amylum.config import load_config, reference, to_toml


def _train(args: argparse.Namespace, overrides: list[str]) -> int:
    from amylum.runtime.build import check_config

    if args.plan:
        overrides = [*overrides, f"--parallel.plan={args.plan}"]
    cfg = load_config(args.config, overrides)
    check_config(cfg)
    if args.print_config:
        print(to_toml(cfg), end="")
        return 0
    from amylum.runtime.distributed import under_torchrun

    if under_torchrun() or cfg.parallel.plan:
        return _train_distributed(cfg)
    from amylum.runtime.run import train

    summary = train(cfg)
    return 0 if summary["completed"] else 1


def _train_distributed(cfg) -> int:
    import sys

    from amylum.parallel.layout import LayoutError
    from amylum.runtime.distributed import train_distributed

    try:
        summary = train_distributed(cfg)
    except LayoutError as e:  # raised before any process group exists: every rank says why and exits
        print(f"amylum train: {e}", file=sys.stderr)
        return 2
    return 0 if summary["completed"] else 1


def _export(args: argparse.Namespace, overrides: list[str]) -> int:
    from amylum.runtime.run import export_checkpoint

    out = export_checkpoint(Path(args.run_dir), args.checkpoint, Path(args.out) if args.out else None)
    print(f"exported to {out}")
    return 0


def _report(args: argparse.Namespace, overrides: list[str]) -> int:
    from amylum.runtime.report import write_reports

    run_dir = Path(args.run_dir)
    if not run_dir.is_dir():
        raise SystemExit(f"amylum report: run directory not found: {run_dir}")
    for path in write_reports(run_dir).values():
        print(path)
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "train",
        help="train a model (no arguments: the tiny vision-language demo on CPU)",
        description="Train on one CPU or GPU, or under torchrun on many processes "
        "(`torchrun --nproc-per-node N -m amylum train CONFIG [--plan PLAN]`). "
        "Config: defaults <- CONFIG.toml <- --section.key=value overrides.",
        epilog="overrides: --section.key=value (values are TOML literals, strings may be bare)\n\n"
        "configuration keys:\n" + reference(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("config", nargs="?", help="TOML config file (optional)")
    p.add_argument("--print-config", action="store_true", help="print the resolved config as TOML and exit")
    p.add_argument("--plan", help="plan file from `amylum plan` (same as --parallel.plan); under torchrun "
                   "without one, the planner plans for the launched world size")
    p.set_defaults(func=_train, accepts_overrides=True)

    p = subparsers.add_parser(
        "export", help="export a run's checkpoint as HF-loadable safetensors",
        description="Rebuild the run's model from RUN_DIR/config.toml, load a checkpoint and export it.",
    )
    p.add_argument("run_dir", help="run directory of `amylum train`")
    p.add_argument("--checkpoint", help="checkpoint folder (default: the latest valid one in RUN_DIR/checkpoints)")
    p.add_argument("--out", help="output folder (default: RUN_DIR/export)")
    p.set_defaults(func=_export)

    p = subparsers.add_parser(
        "report", help="(re)write RUN_DIR/report.html, report.json and report.md (+ plots) from the run's files")
    p.add_argument("run_dir", help="run directory of `amylum train`")
    p.set_defaults(func=_report)

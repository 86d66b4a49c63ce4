"""The ``amylum`` command. Each package adds its subcommands through ``register(subparsers)``."""

from __future__ import annotations

import argparse
import importlib
import sys

from amylum import __version__
from amylum.config import ConfigError, normalize_overrides

# Modules that add subcommands. An import error here is a bug to surface, not a command to hide.
COMMAND_MODULES = ("amylum.runtime.commands", "amylum.planner.commands", "amylum.evaluation.commands", "amylum.selection.commands", "amylum.planner.energy.commands",
                   "amylum.resilience.commands")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="amylum",
        description="Compose multimodal LLMs from HuggingFace models, plan and run their training.",
        epilog="`amylum train` with no arguments trains the tiny vision-language demo on CPU. "
        "`amylum COMMAND --help` for each command.",
    )
    parser.add_argument("--version", action="version", version=f"amylum {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    # `--section.key value` → `--section.key=value`, so a bare value is never taken for CONFIG.
    args, extra = parser.parse_known_args(normalize_overrides(list(sys.argv[1:] if argv is None else argv)))
    if extra and not getattr(args, "accepts_overrides", False):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    try:
        return args.func(args, extra)
    except ConfigError as e:
        print(f"amylum {args.command}: config error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

"""``amylum train-elastic CONFIG [--section.key=value ...]``: the elastic worker as a subcommand.

Registered by adding ``"amylum.resilience.commands"`` to ``COMMAND_MODULES`` in ``amylum/cli.py``.
Run it under torchrun, one agent per node (docs/resilience.md); ``-m amylum.resilience.launch``
is the same worker with warm-spare restarts.
"""

from __future__ import annotations

import argparse


def _train_elastic(args: argparse.Namespace, overrides: list[str]) -> int:
    from amylum.resilience.worker import main

    return main([args.config, *overrides])


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "train-elastic", help="fault-tolerant training under torchrun's elastic agents (one worker per node)",
        description="Elastic worker: re-plans from pipeline templates when nodes leave or join, restores "
        "state from host memory (or the last disk checkpoint beyond f failures). Run one torchrun agent "
        "per node with --nnodes MIN:MAX --nproc-per-node 1 --rdzv-backend c10d; see docs/resilience.md.")
    p.add_argument("config", help="amylum config TOML with a [resilience] table")
    p.set_defaults(func=_train_elastic, accepts_overrides=True)

"""Reading a TOML file with errors that name the file and what it was meant to be."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any


def read_toml(path: str | Path, what: str, error: type[Exception] = ValueError) -> dict[str, Any]:
    """The parsed table of ``path``; ``error(...)`` if it is missing or not valid TOML."""
    p = Path(path)
    if not p.is_file():
        raise error(f"{what} not found: {p}")
    try:
        return tomllib.loads(p.read_text())
    except tomllib.TOMLDecodeError as e:
        raise error(f"{p}: not valid TOML: {e}") from None

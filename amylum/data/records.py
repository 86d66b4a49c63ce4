"""LLaVA-style conversation records from JSON / JSONL.

A record looks like::

    {"id": "42",
     "image": "img/42.png",            # or "images": ["a.png", "b.png"]
     "audio": "wav/42.wav",            # or a list of paths ("audios" also accepted)
     "conversations": [{"from": "human", "value": "<image>\\nWhat digit is this?"},
                       {"from": "gpt",   "value": "7"}]}

Parsing here is model-independent: it checks the structure and normalises media keys
(``image``/``images`` → ``"image"``, ``audio``/``audios`` → ``"audio"``, ``video``/``videos``
→ ``"video"``). Whether the model has an encoder for each kind, and whether the placeholders
match the items, is checked by the processor, which knows the model's modalities. Any other
key is kept in ``Record.extra`` (task labels, metadata, custom tensor inputs).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from amylum.data.errors import EMPTY_CONVERSATION, INVALID_RECORD, DataError, OnError, SkipCounter, check_on_error

# Record key → media kind. A kind is matched against ``spec.kind`` of the model's encoders.
MEDIA_KEYS = {
    "image": "image",
    "images": "image",
    "audio": "audio",
    "audios": "audio",
    "video": "video",
    "videos": "video",
}

ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "system": "system"}


@dataclass(frozen=True)
class Turn:
    role: str  # "system" | "user" | "assistant"
    text: str


@dataclass
class Record:
    id: str
    turns: list[Turn]
    media: dict[str, list[str]] = field(default_factory=dict)  # kind → paths, in placeholder order
    extra: dict[str, Any] = field(default_factory=dict)


def parse_record(obj: Any, where: str = "") -> Record:
    """Validate one raw record; ``where`` (e.g. ``"train.jsonl:12"``) names it if it has no id."""
    if not isinstance(obj, dict):
        raise DataError(where or "?", f"a record must be a JSON object, got {type(obj).__name__}")
    raw_id = obj.get("id")
    if raw_id is None or (isinstance(raw_id, str) and not raw_id.strip()):
        raise DataError(where or "?", "record has no 'id'")
    if not isinstance(raw_id, (str, int)):
        raise DataError(where or str(raw_id), f"'id' must be a string or integer, got {type(raw_id).__name__}")
    rid = str(raw_id)

    media: dict[str, list[str]] = {}
    extra: dict[str, Any] = {}
    for key, value in obj.items():
        if key in ("id", "conversations"):
            continue
        kind = MEDIA_KEYS.get(key)
        if kind is None:
            extra[key] = value
            continue
        if kind in media:
            raise DataError(rid, f"has both '{key}' and another key for {kind} items; use one list")
        paths = [value] if isinstance(value, str) else value
        if not isinstance(paths, list) or not all(isinstance(p, str) and p for p in paths):
            raise DataError(rid, f"'{key}' must be a file path or a list of file paths, got {value!r}")
        media[kind] = list(paths)

    return Record(id=rid, turns=_parse_turns(rid, obj.get("conversations")), media=media, extra=extra)


def _parse_turns(rid: str, conv: Any) -> list[Turn]:
    if conv is None:
        raise DataError(rid, "has no 'conversations'", EMPTY_CONVERSATION)
    if not isinstance(conv, list):
        raise DataError(rid, f"'conversations' must be a list, got {type(conv).__name__}")
    if not conv:
        raise DataError(rid, "'conversations' is empty", EMPTY_CONVERSATION)
    turns = []
    for i, t in enumerate(conv):
        if not isinstance(t, dict) or "from" not in t or "value" not in t:
            raise DataError(rid, f"turn {i} must be an object with 'from' and 'value', got {t!r}")
        role = ROLES.get(t["from"])
        if role is None:
            raise DataError(rid, f"turn {i} has unknown role {t['from']!r} (expected one of {sorted(ROLES)})")
        if not isinstance(t["value"], str):
            raise DataError(rid, f"turn {i} 'value' must be a string, got {type(t['value']).__name__}")
        turns.append(Turn(role, t["value"]))
    if not any(t.role == "assistant" and t.text.strip() for t in turns):
        # Nothing to learn from (and nothing to evaluate against).
        raise DataError(rid, "conversation has no non-empty assistant ('gpt') turn", EMPTY_CONVERSATION)
    if not any(t.role == "user" for t in turns):
        raise DataError(rid, "conversation has no user ('human') turn", EMPTY_CONVERSATION)
    return turns


def iter_raw_records(path: str | Path) -> Iterator[tuple[str, Any]]:
    """Yield ``(where, raw_object)``; JSONL if the suffix is .jsonl, else a JSON list.

    A malformed JSON line is yielded as a :class:`DataError` instead of an object, so the
    caller can skip it like any other bad record.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"records file {str(path)!r} does not exist")
    if path.suffix == ".jsonl":
        with path.open(encoding="utf-8") as f:
            for n, line in enumerate(f, 1):
                if not line.strip():
                    continue
                where = f"{path.name}:{n}"
                try:
                    yield where, json.loads(line)
                except json.JSONDecodeError as e:
                    yield where, DataError(where, f"line is not valid JSON ({e.msg} at column {e.colno})")
        return
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ValueError(f"records file {str(path)!r} is not valid JSON: {e}") from e
    if not isinstance(data, list):
        raise ValueError(f"records file {str(path)!r} must hold a JSON list of records (or use .jsonl)")
    for i, obj in enumerate(data):
        yield f"{path.name}[{i}]", obj


def load_records(
    path: str | Path, on_error: OnError = "raise", skipped: SkipCounter | None = None
) -> list[Record]:
    """Parse and validate every record of a JSON / JSONL file.

    With ``on_error="skip"`` invalid records are left out and counted in ``skipped``.
    """
    check_on_error(on_error)
    records = []
    for where, obj in iter_raw_records(path):
        try:
            if isinstance(obj, DataError):
                raise obj
            records.append(parse_record(obj, where))
        except DataError as e:
            if on_error == "raise":
                raise
            if skipped is not None:
                skipped.add(e)
    return records

"""Errors for bad input data, and the counter that ``on_error="skip"`` reports through.

Every data error names the record it came from and the problem, so a user with a
million-line JSONL file can find the culprit without a debugger. ``reason`` is a short
machine-readable code (``"missing_file"``, ``"too_long"``, …) used to count skips by kind.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field
from typing import Literal

logger = logging.getLogger("amylum.data")

OnError = Literal["raise", "skip"]

# Reasons, so tests and reports can count skips by kind without parsing messages.
INVALID_RECORD = "invalid_record"
EMPTY_CONVERSATION = "empty_conversation"
MISSING_FILE = "missing_file"
UNREADABLE_FILE = "unreadable_file"
CORRUPT_IMAGE = "corrupt_image"
BAD_AUDIO = "bad_audio"
UNKNOWN_MODALITY = "unknown_modality"
PLACEHOLDER_MISMATCH = "placeholder_mismatch"
TOO_LONG = "too_long"


class DataError(ValueError):
    """A record that cannot be turned into a training sample."""

    def __init__(self, record_id: str, problem: str, reason: str = INVALID_RECORD):
        self.record_id = record_id
        self.problem = problem
        self.reason = reason
        super().__init__(f"record {record_id!r}: {problem}")


def check_on_error(on_error: str) -> OnError:
    if on_error not in ("raise", "skip"):
        raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
    return on_error  # type: ignore[return-value]


@dataclass
class SkipCounter:
    """Counts records skipped under ``on_error="skip"``; owned by a processor or dataset.

    The first ``log_first`` skips are logged one by one with their message; after that only
    every power of ten is logged, so a badly broken dataset does not flood the log.
    """

    log_first: int = 10
    keep_examples: int = 20
    count: int = 0
    by_reason: Counter = field(default_factory=Counter)
    examples: list[str] = field(default_factory=list)

    def add(self, error: DataError) -> None:
        self.count += 1
        self.by_reason[error.reason] += 1
        if len(self.examples) < self.keep_examples:
            self.examples.append(str(error))
        if self.count <= self.log_first:
            logger.warning("skipping bad record (%d skipped so far): %s", self.count, error)
        elif _is_power_of_ten(self.count):
            logger.warning("%d bad records skipped so far: %s", self.count, dict(self.by_reason))

    def merge(self, other: "SkipCounter") -> None:
        self.count += other.count
        self.by_reason.update(other.by_reason)
        room = self.keep_examples - len(self.examples)
        self.examples.extend(other.examples[: max(0, room)])

    def summary(self) -> str:
        if not self.count:
            return "no bad records skipped"
        reasons = ", ".join(f"{r}: {n}" for r, n in sorted(self.by_reason.items()))
        return f"{self.count} bad records skipped ({reasons})"

    def state(self) -> dict:
        return {"count": self.count, "by_reason": dict(self.by_reason)}


def _is_power_of_ten(n: int) -> bool:
    while n >= 10 and n % 10 == 0:
        n //= 10
    return n == 1

"""A task's data (records → selected, prompt-templated records) and its predictions.

Records use the training format (``amylum.data.records``); the last assistant turn is the
reference (or the record's ``references`` list, for multi-reference tasks such as captioning),
and a record's ``choices`` list makes it a multiple-choice item.
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from amylum.data.errors import DataError, SkipCounter
from amylum.data.records import Record, Turn, load_records
from amylum.evaluation.config import BudgetConfig, TaskConfig
from amylum.evaluation.distributed import LocalComm
from amylum.evaluation.generate import generate
from amylum.evaluation.metrics import EvalItem
from amylum.evaluation.slices import ItemMeta

_FIELD = re.compile(r"\{(\w+)\}")


@dataclass
class Prediction:
    task: str
    id: str
    prompt: str  # the last user turn as the model saw it (after the task's template)
    output: str
    references: list[str]
    choices: list[str] | None
    media: dict[str, list[str]]  # media kind → absolute paths
    meta: ItemMeta
    terminated: bool = True  # False: stopped by max_new_tokens before <eos>

    @property
    def item(self) -> EvalItem:
        return EvalItem(self.id, self.output, tuple(self.references), tuple(self.choices) if self.choices else None)

    def to_json(self) -> dict[str, Any]:
        return {"task": self.task, "id": self.id, "prompt": self.prompt, "output": self.output,
                "references": self.references, "choices": self.choices, "media": self.media,
                "terminated": self.terminated, "meta": self.meta.to_json()}


@dataclass
class Skipped:
    id: str
    reason: str
    message: str

    def to_json(self) -> dict[str, str]:
        return dataclasses.asdict(self)


def format_choices(choices: list[str]) -> str:
    return "\n".join(f"{chr(ord('A') + i)}. {c}" for i, c in enumerate(choices))


def apply_template(record: Record, template: str) -> Record:
    """Rewrite the last user turn with ``template`` (``{prompt}``, ``{choices}``, ``{<record key>}``)."""
    if template == "{prompt}":
        return record
    idx = max(i for i, t in enumerate(record.turns) if t.role == "user")
    values = {"prompt": record.turns[idx].text}
    if isinstance(record.extra.get("choices"), list):
        values["choices"] = format_choices([str(c) for c in record.extra["choices"]])

    def sub(m: re.Match) -> str:
        key = m.group(1)
        if key in values:
            return values[key]
        if key in record.extra:
            return str(record.extra[key])
        raise DataError(record.id, f"prompt template needs {{{key}}} but the record has no {key!r} field")

    turns = list(record.turns)
    turns[idx] = Turn("user", _FIELD.sub(sub, template))
    return dataclasses.replace(record, turns=turns)


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


class TaskData:
    """The records one task evaluates: parsed once, a fixed seeded subset, prompts templated.

    The same items are evaluated at every step (so curves compare like with like); the
    records file's SHA-256 ties every score to the exact version of the set.
    """

    def __init__(self, cfg: TaskConfig, budget: BudgetConfig) -> None:
        self.cfg = cfg
        self.media_root = cfg.media_root or cfg.data.parent
        invalid = SkipCounter(log_first=0)
        records = load_records(cfg.data, on_error="skip", skipped=invalid)
        self.load_skipped = [Skipped("?", "invalid_record", msg) for msg in invalid.examples]
        self.load_skipped_count = invalid.count
        limit = cfg.max_samples if cfg.max_samples is not None else budget.max_samples
        self.num_records = len(records)
        if limit and limit < len(records):
            keep = np.sort(np.random.default_rng(budget.seed).permutation(len(records))[:limit])
            records = [records[i] for i in keep]
        self.records: list[Record] = []
        self.template_skipped: list[Skipped] = []
        for r in records:
            try:
                self.records.append(apply_template(r, cfg.prompt))
            except DataError as e:
                self.template_skipped.append(Skipped(e.record_id, e.reason, e.problem))
        self.info = {"path": str(cfg.data), "sha256": file_sha256(cfg.data), "records": self.num_records,
                     "selected": len(records), "invalid_records": invalid.count}


def references_of(record: Record) -> list[str]:
    refs = record.extra.get("references")
    if isinstance(refs, list) and refs and all(isinstance(r, str) for r in refs):
        return list(refs)
    return [record.turns[-1].text]


@dataclass
class PredictOutcome:
    predictions: list[Prediction] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)
    truncated: bool = False  # the time budget ran out before every record was generated


def predict(
    model,
    processor,
    task: TaskConfig,
    records: list[Record],
    media_root: Path,
    *,
    batch_size: int,
    deadline: float | None = None,
    comm=None,
) -> PredictOutcome:
    """Generate an answer for every record (this rank's share under ``comm``); gathered results."""
    comm = comm or LocalComm()
    out = PredictOutcome()
    mine = records[comm.rank :: comm.world_size]
    samples = []
    for record in mine:
        try:
            sample = processor.process(record, media_root)
        except DataError as e:
            out.skipped.append(Skipped(e.record_id, e.reason, e.problem))
            continue
        samples.append((record, sample))
    # Every rank runs the same number of batches (a sharded model's collectives must match);
    # a rank that has run out repeats a sample and drops the result.
    n_batches = comm.max_int(-(-len(samples) // batch_size))
    if n_batches and not samples:
        raise RuntimeError(f"task {task.name!r}: rank {comm.rank} has no valid record to evaluate while other ranks do")
    for b in range(n_batches):
        if deadline is not None and not comm.all_true(time.perf_counter() < deadline):
            out.truncated = True
            break
        chunk = samples[b * batch_size : (b + 1) * batch_size]
        real = len(chunk)
        batch_samples = [s for _, s in chunk] or [samples[0][1]]
        batch = processor.collate(batch_samples).to(_device(model))
        ids = generate(model, batch, max_new_tokens=task.max_new_tokens, eos_token_id=processor.eos_token_id,
                       sampling=task.sampling, all_done=comm.all_true if comm.world_size > 1 else None)
        for (record, sample), toks in zip(chunk[:real], ids):
            meta = ItemMeta(
                media_counts={k: len(v) for k, v in record.media.items()},
                audio_seconds=sample.stats.get("audio_seconds"), prompt_tokens=len(sample),
                reference=references_of(record)[0], fields=record.extra,
            )
            choices = record.extra.get("choices")
            out.predictions.append(Prediction(
                task=task.name, id=record.id, prompt=_last_user(record), output=processor.decode(toks),
                references=references_of(record), choices=[str(c) for c in choices] if isinstance(choices, list) else None,
                media={k: [str(_abs(p, media_root)) for p in v] for k, v in record.media.items()}, meta=meta,
                terminated=len(toks) < task.max_new_tokens,
            ))
    out.predictions = comm.gather(out.predictions)
    out.skipped = comm.gather(out.skipped)
    out.truncated = not comm.all_true(not out.truncated)
    order = {r.id: i for i, r in enumerate(records)}
    out.predictions.sort(key=lambda p: order.get(p.id, len(order)))
    return out


def _device(model):
    return next(model.parameters()).device


def _last_user(record: Record) -> str:
    return [t for t in record.turns if t.role == "user"][-1].text


def _abs(path: str, root: Path) -> Path:
    p = Path(path)
    return p if p.is_absolute() else (root / p).resolve()

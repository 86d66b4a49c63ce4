"""Human review: export a reproducible sample of predictions for people to judge, import their
judgements back as scores labelled ``human:<annotator>``, next to the automated ones.

The export is two files:

* ``review.html`` — one card per item (prompt, embedded images and audio, output, references),
  opens offline; its buttons record a score per item and download the filled ``review.jsonl``;
* ``review.jsonl`` — one object per item with ``human_score`` (null until judged; a number in
  [0, 1], 1 = correct/acceptable), ``annotator`` and ``comment`` to fill in by hand or from the page.

Automated scores are deliberately left out of both, so they do not anchor the reviewer.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from amylum.evaluation.html import esc, media_html, page


def item_id(row: dict[str, Any]) -> str:
    return f"{row['task']}/{row['id']}"


def sample_rows(rows: Sequence[dict[str, Any]], n: int, seed: int = 0) -> list[dict[str, Any]]:
    """``n`` rows chosen by ``seed`` (the same rows for the same predictions, whatever their order)."""
    ordered = sorted(rows, key=item_id)
    if n <= 0 or n >= len(ordered):
        return ordered
    keep = np.sort(np.random.default_rng(seed).choice(len(ordered), size=n, replace=False))
    return [ordered[i] for i in keep]


def read_predictions(path: str | Path) -> list[dict[str, Any]]:
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"predictions file not found: {p}")
    return [json.loads(line) for line in p.read_text().splitlines() if line.strip()]


_SCRIPT = """
const scores = {};
document.querySelectorAll('button[data-score]').forEach(b => b.onclick = () => {
  const id = b.dataset.item; scores[id] = parseFloat(b.dataset.score);
  document.querySelectorAll(`button[data-item="${CSS.escape(id)}"]`).forEach(x => x.style.fontWeight = x === b ? '700' : '400');
  document.getElementById('count').textContent = Object.keys(scores).length;
});
document.getElementById('download').onclick = () => {
  const who = document.getElementById('annotator').value.trim();
  if (!who) { alert('Enter your name first: every human score is labelled with who gave it.'); return; }
  const lines = ROWS.map(r => JSON.stringify(Object.assign({}, r, {
    human_score: r.item_id in scores ? scores[r.item_id] : null, annotator: who,
    comment: (document.querySelector(`textarea[data-item="${CSS.escape(r.item_id)}"]`) || {}).value || ''})));
  const a = document.createElement('a');
  a.href = URL.createObjectURL(new Blob([lines.join('\\n') + '\\n'], {type: 'application/jsonl'}));
  a.download = 'review.jsonl'; a.click();
};
"""


def export_review(rows: Sequence[dict[str, Any]], out_dir: str | Path, *, n: int = 50, seed: int = 0,
                  title: str = "amylum human review") -> tuple[Path, Path]:
    """Write ``review.html`` and ``review.jsonl`` for a seeded sample of ``rows`` (prediction rows)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    chosen = sample_rows(rows, n, seed)
    items = [{"item_id": item_id(r), "task": r["task"], "id": r["id"], "prompt": r["prompt"], "output": r["output"],
              "references": r["references"], "choices": r.get("choices"),
              "media": [p for paths in r.get("media", {}).values() for p in paths],
              "human_score": None, "annotator": "", "comment": ""} for r in chosen]
    jsonl = out / "review.jsonl"
    jsonl.write_text("".join(json.dumps(it) + "\n" for it in items))
    cards = []
    for it in items:
        media = "".join(media_html(p) for p in it["media"])
        choices = ("<div><b>choices</b>: " + esc(" | ".join(it["choices"])) + "</div>") if it["choices"] else ""
        buttons = "".join(f'<button data-item="{esc(it["item_id"])}" data-score="{s}">{label}</button> '
                          for s, label in ((1, "correct"), (0.5, "partly"), (0, "wrong")))
        cards.append(
            f'<div class="card"><div class="small">{esc(it["item_id"])}</div>'
            f'<div>{media}</div><div><b>prompt</b>: <pre>{esc(it["prompt"])}</pre></div>{choices}'
            f'<div><b>model output</b>: <pre>{esc(it["output"]) or "<span class=na>(empty)</span>"}</pre></div>'
            f'<div><b>reference(s)</b>: {esc(" | ".join(it["references"]))}</div>'
            f'<div>{buttons}<textarea data-item="{esc(it["item_id"])}" rows=1 cols=50 placeholder="comment"></textarea></div></div>'
        )
    body = (f"<h1>{esc(title)}</h1><p>{len(items)} items (seed {seed}, of {len(rows)} predictions). Judge each output "
            "against the references; automated scores are hidden on purpose. Either click a score per item and "
            "download the file, or fill <code>human_score</code> (0–1), <code>annotator</code> and "
            "<code>comment</code> in <code>review.jsonl</code> by hand, then run <code>amylum eval-import</code>.</p>"
            '<p>Your name: <input id="annotator"> <button id="download">download review.jsonl</button> '
            '(<span id="count">0</span> judged)</p>' + "".join(cards))
    script = "const ROWS = " + json.dumps(items).replace("</", "<\\/") + ";" + _SCRIPT
    html_path = out / "review.html"
    html_path.write_text(page(title, body, script))
    return html_path, jsonl


@dataclass(frozen=True)
class Annotation:
    item_id: str
    score: float
    annotator: str
    comment: str = ""


def load_annotations(path: str | Path) -> tuple[list[Annotation], int]:
    """Judged rows of an annotated ``review.jsonl``, and how many rows are still unjudged."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"annotations file not found: {p}")
    out, unjudged = [], 0
    for n, line in enumerate(p.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"{p.name}:{n}: not valid JSON ({e.msg})") from None
        if not isinstance(row, dict) or "item_id" not in row:
            raise ValueError(f"{p.name}:{n}: each line must be an object with 'item_id'")
        score = row.get("human_score")
        if score is None:
            unjudged += 1
            continue
        if isinstance(score, bool):
            score = float(score)
        if not isinstance(score, (int, float)) or not 0 <= score <= 1 or math.isnan(score):
            raise ValueError(f"{p.name}:{n}: human_score must be a number in [0, 1] or null, got {score!r}")
        annotator = str(row.get("annotator") or "").strip() or "unnamed"
        out.append(Annotation(row["item_id"], float(score), annotator, str(row.get("comment") or "")))
    return out, unjudged


def _kappa(a: list[bool], b: list[bool]) -> float | None:
    """Cohen's kappa of two binary raters (None when chance agreement is total)."""
    n = len(a)
    po = sum(x == y for x, y in zip(a, b)) / n
    pa, pb = sum(a) / n, sum(b) / n
    pe = pa * pb + (1 - pa) * (1 - pb)
    return None if pe == 1 else (po - pe) / (1 - pe)


def attach_human_scores(results: dict[str, Any], annotations: Sequence[Annotation]) -> dict[str, Any]:
    """A copy of a step's results with ``tasks[t]["human"][annotator]`` added.

    Each entry: the mean human score, n, ``scorer = "human:<annotator>"``, and, for every
    automated metric with per-item scores, agreement on the same items (both binarised at 0.5)
    and Cohen's kappa. Annotations for items the results do not know are an error.
    """
    out = json.loads(json.dumps(results))
    tasks = out.get("tasks", {})
    grouped: dict[tuple[str, str], dict[str, float]] = {}
    for a in annotations:
        task, _, rid = a.item_id.partition("/")
        if task not in tasks:
            raise ValueError(f"annotation for {a.item_id!r}: task {task!r} is not in these results ({sorted(tasks)})")
        grouped.setdefault((task, a.annotator), {})[rid] = a.score
    for (task, annotator), scores in sorted(grouped.items()):
        t = tasks[task]
        entry: dict[str, Any] = {"value": sum(scores.values()) / len(scores), "n": len(scores),
                                 "scorer": f"human:{annotator}", "agreement": {}}
        for name, m in t.get("metrics", {}).items():
            per_item = m.get("per_item")
            if not per_item:
                continue
            unknown = sorted(set(scores) - set(per_item))
            if unknown:
                raise ValueError(f"annotations for {task}/{unknown[0]} (and {len(unknown) - 1} more) match no evaluated item")
            both = sorted(scores)
            h = [scores[i] >= 0.5 for i in both]
            s = [per_item[i] >= 0.5 for i in both]
            entry["agreement"][name] = {"n": len(both), "agreement": sum(x == y for x, y in zip(h, s)) / len(both),
                                        "kappa": _kappa(h, s), "scorer": m.get("scorer")}
        t.setdefault("human", {})[annotator] = entry
    return out

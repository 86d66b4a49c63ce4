"""Gather a run directory into one JSON-able report tree (``report.json``).

Reads only files (config.toml, plan.{json,toml}, summary.json, metrics.jsonl, data/, eval/),
so a report can be rebuilt at any time, for finished, interrupted or copied runs. Whatever a
run did not record is written as ``{"available": false, "why": ...}``, never guessed.
"""

from __future__ import annotations

import json
import tomllib
from collections import Counter
from pathlib import Path
from typing import Any

NOT_AVAILABLE = "not available"
SMALL_BUCKET = 30  # buckets with fewer items are marked: their numbers move a lot by chance
ENERGY_KEYS = ("energy_j", "joules_per_step", "energy_j_per_step", "tokens_per_j", "avg_power_w", "energy_kwh")
THROUGHPUT_KEYS = ("tokens_per_s", "samples_per_s", "images_per_s", "audio_items_per_s", "audio_seconds_per_s",
                   "step_time_s", "llm_tflops", "encoder_tflops", "mfu_pct", "peak_mem_allocated_gib",
                   "peak_mem_reserved_gib", "peak_rss_gib")


def missing(why: str) -> dict[str, Any]:
    return {"available": False, "why": why}


def _read_json(path: Path) -> Any:
    return json.loads(path.read_text()) if path.is_file() else None


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _config(run_dir: Path) -> dict[str, Any]:
    path = run_dir / "config.toml"
    if not path.is_file():
        return missing("the run directory has no config.toml")
    text = path.read_text()
    try:
        parsed = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        return {"available": True, "text": text, "error": f"not valid TOML: {e}"}
    return {"available": True, "text": text, "values": parsed}


def _plan(run_dir: Path) -> dict[str, Any]:
    for name in ("plan.json", "plan.toml"):
        path = run_dir / name
        if path.is_file():
            return {"available": True, "file": name, "text": path.read_text()}
    return missing("no plan file in the run directory (single-device runs have no parallel plan)")


def _records_mix(path: Path, limit: int = 200_000) -> dict[str, Any]:
    """Counts by the records' ``task`` field and by modality mix (first ``limit`` records)."""
    tasks: Counter = Counter()
    mixes: Counter = Counter()
    n = 0
    with path.open(encoding="utf-8") as f:
        for line in f:
            if not line.strip():
                continue
            if n >= limit:
                break
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue
            n += 1
            tasks[str(rec.get("task", "(none)"))] += 1
            kinds = sorted({k.rstrip("s") for k in ("image", "images", "audio", "audios", "video", "videos") if rec.get(k)})
            mixes["+".join(kinds) or "text"] += 1
    return {"path": str(path), "records": n, "truncated_at": limit if n >= limit else None,
            "by_task": dict(tasks.most_common()), "by_modality": dict(mixes.most_common())}


def _data(run_dir: Path, config: dict[str, Any]) -> dict[str, Any]:
    values = config.get("values", {}).get("data", {}) if config.get("available") else {}
    train = Path(values["path"]) if values.get("path") else run_dir / "data" / "train.jsonl"
    out: dict[str, Any] = {"demo": _read_json(run_dir / "data" / "meta.json")}
    if train.is_file() and train.suffix == ".jsonl":
        out["train"] = _records_mix(train)
    else:
        out["train"] = missing(f"training records not found at {train} (or not JSONL)")
    summary = _read_json(run_dir / "summary.json") or {}
    out["skipped_training_records"] = summary.get("skipped") or missing("the trainer did not record skipped records")
    return out


def _hardware(summary: dict[str, Any]) -> dict[str, Any]:
    if "hardware" in summary:
        return {"available": True, **summary["hardware"]}
    if "device" in summary:
        return {"available": True, "device": summary["device"], "note": "only the device name was recorded"}
    return missing("summary.json records no device")


def _energy(train: list[dict[str, Any]], summary: dict[str, Any]) -> dict[str, Any]:
    """Per-step energy metrics and the run total; the trainer's own reason when it could not measure."""
    def stats(key: str) -> dict[str, Any]:
        values = [r[key] for r in train if isinstance(r.get(key), (int, float)) and not isinstance(r.get(key), bool)]
        if not values:
            return missing(f"no '{key}' in the training metrics")
        return {"available": True, "last": values[-1], "mean": sum(values) / len(values), "n": len(values)}

    energy = {k: v for k, v in ((k, stats(k)) for k in ENERGY_KEYS) if v["available"]}
    if energy:
        total = summary.get("energy")
        if isinstance(total, dict) and total.get("available"):
            energy["run_total"] = total
        return energy
    reasons = [r["energy_unavailable_reason"] for r in train if r.get("energy_available") is False
               and r.get("energy_unavailable_reason")]
    total = summary.get("energy")
    if reasons:
        return missing(reasons[-1])
    if isinstance(total, dict) and total.get("available") is False and total.get("why"):
        return missing(total["why"])
    return missing("no energy metrics logged (no power meter on this device, or the trainer did not record one)")


def _efficiency(train: list[dict[str, Any]], summary: dict[str, Any] | None = None) -> dict[str, Any]:
    def stats(key: str) -> dict[str, Any]:
        values = [r[key] for r in train if isinstance(r.get(key), (int, float))]
        if not values:
            return missing(f"no '{key}' in the training metrics")
        return {"available": True, "last": values[-1], "mean": sum(values) / len(values), "n": len(values)}

    throughput = {k: stats(k) for k in THROUGHPUT_KEYS}
    throughput = {k: v for k, v in throughput.items() if v["available"]} or missing("no training metrics logged")
    energy = _energy(train, summary or {})
    loss = [(r["step"], r["loss"]) for r in train if isinstance(r.get("loss"), (int, float))]
    return {"throughput": throughput, "energy": energy, "loss_curve": loss}


def _eval_steps(run_dir: Path) -> list[dict[str, Any]]:
    steps = []
    for path in sorted((run_dir / "eval").glob("step-*.json")):
        try:
            steps.append(json.loads(path.read_text()))
        except json.JSONDecodeError:
            continue  # a file being written right now; the next report picks it up
    return sorted(steps, key=lambda s: (s.get("step") is None, s.get("step") or 0))


def _curves(steps: list[dict[str, Any]]) -> dict[str, Any]:
    """task → metric → {"all": [(step, v)], slice → bucket → [(step, v)]}."""
    out: dict[str, Any] = {}
    for s in steps:
        if s.get("step") is None:
            continue
        for task, t in s.get("tasks", {}).items():
            for metric, m in t.get("metrics", {}).items():
                c = out.setdefault(task, {}).setdefault(metric, {"all": [], "slices": {}})
                c["all"].append((s["step"], m["value"]))
                for slice_name, buckets in t.get("slices", {}).items():
                    for label, b in buckets.items():
                        if metric in b["metrics"]:
                            c["slices"].setdefault(slice_name, {}).setdefault(label, []).append(
                                (s["step"], b["metrics"][metric]["value"]))
    return out


def _regressions(steps: list[dict[str, Any]], threshold: float) -> list[dict[str, Any]]:
    """Buckets (and overall scores) whose latest value is below their best earlier value by more
    than ``threshold`` × the metric's range."""
    flags = []
    if len(steps) < 2:
        return flags
    last = steps[-1]
    for task, t in last.get("tasks", {}).items():
        for metric, m in t.get("metrics", {}).items():
            span = 100.0 if m.get("scale") == "0-100" else 10.0 if m.get("scale") == "0-10" else 1.0
            sign = 1 if m.get("higher_is_better", True) else -1
            points = [("overall", "all", m["value"], m["n"])]
            for slice_name, buckets in t.get("slices", {}).items():
                points += [(slice_name, label, b["metrics"][metric]["value"], b["n"]) for label, b in buckets.items()
                           if metric in b["metrics"]]
            for slice_name, label, value, n in points:
                earlier = []
                for s in steps[:-1]:
                    et = s.get("tasks", {}).get(task, {})
                    if slice_name == "overall":
                        v = et.get("metrics", {}).get(metric, {}).get("value")
                    else:
                        v = et.get("slices", {}).get(slice_name, {}).get(label, {}).get("metrics", {}).get(metric, {}).get("value")
                    if v is not None:
                        earlier.append((s["step"], v))
                if not earlier:
                    continue
                best_step, best = max(earlier, key=lambda e: sign * e[1])
                drop = sign * (best - value)
                if drop > threshold * span:
                    flags.append({"task": task, "metric": metric, "slice": slice_name, "bucket": label, "n": n,
                                  "best": best, "best_step": best_step, "last": value, "last_step": last["step"],
                                  "drop": drop, "small": n < SMALL_BUCKET})
    return flags


def _wrong_examples(run_dir: Path, step: dict[str, Any], limit: int = 12) -> list[dict[str, Any]]:
    """Predictions the first per-item metric scored below 0.5 in the latest evaluation."""
    from amylum.evaluation.evaluator import step_name

    rows = _read_jsonl(run_dir / "eval" / "predictions" / f"{step_name(step.get('step'))}.jsonl")
    out = []
    for row in rows:
        t = step.get("tasks", {}).get(row["task"], {})
        per_item = next((m["per_item"] for m in t.get("metrics", {}).values() if m.get("per_item")), None)
        if per_item is not None and per_item.get(row["id"], 1.0) < 0.5:
            out.append({k: row.get(k) for k in ("task", "id", "prompt", "output", "references", "media")})
            if len(out) >= limit:
                break
    return out


def gather(run_dir: str | Path, *, regression_threshold: float = 0.05) -> dict[str, Any]:
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"run directory not found: {run_dir}")
    from amylum import __version__

    summary = _read_json(run_dir / "summary.json") or {}
    metrics = _read_jsonl(run_dir / "metrics.jsonl")
    train = [r for r in metrics if r.get("kind") == "train"]
    config = _config(run_dir)
    steps = _eval_steps(run_dir)
    latest = steps[-1] if steps else None
    robust = next((s for s in reversed(steps) if any("robustness" in t for t in s.get("tasks", {}).values())), None)
    report: dict[str, Any] = {
        "format": "amylum-run-report", "version": 1, "run_dir": str(run_dir.resolve()), "name": run_dir.name,
        "code": {"amylum": __version__, "commit": summary.get("commit") or NOT_AVAILABLE},
        "summary": summary or missing("no summary.json (the run may not have finished)"),
        "config": config, "plan": _plan(run_dir), "data": _data(run_dir, config),
        "hardware": _hardware(summary), "efficiency": _efficiency(train, summary),
        "evaluation": {
            "available": bool(steps),
            "steps": [s.get("step") for s in steps],
            "latest": _strip_per_item(latest) if latest else missing("no evaluation results in RUN_DIR/eval"),
            "curves": _curves(steps),
            "robustness": ({"step": robust["step"], "tasks": {k: t["robustness"] for k, t in robust["tasks"].items()
                                                             if "robustness" in t}}
                           if robust else missing("no robustness pass was run")),
            "regressions": _regressions(steps, regression_threshold),
            "regression_threshold": regression_threshold,
            "small_bucket": SMALL_BUCKET,
        },
        "failures": {
            "training": summary.get("failures") or summary.get("recoveries") or missing("no failures or recoveries recorded"),
            "evaluation": {k: t.get("failures", {}) for k, t in (latest or {}).get("tasks", {}).items()},
            "wrong_examples": _wrong_examples(run_dir, latest) if latest else [],
        },
    }
    return report


def _strip_per_item(step: dict[str, Any]) -> dict[str, Any]:
    out = json.loads(json.dumps(step))
    for t in out.get("tasks", {}).values():
        for m in t.get("metrics", {}).values():
            m.pop("per_item", None)
    return out

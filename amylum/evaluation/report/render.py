"""Render a gathered report tree as one offline HTML page (inline CSS, SVG charts, embedded images)."""

from __future__ import annotations

from typing import Any

from amylum.evaluation.html import esc, fmt, line_chart, media_html, page, table

NA = '<span class="na">not available</span>'
_SCALE_RANGE = {"0-1": (0.0, 1.0), "0-100": (0.0, 100.0), "0-10": (0.0, 10.0)}


def _na(section: dict[str, Any]) -> str:
    return f'<p class="na">not available: {esc(section.get("why", ""))}</p>'


def _ci(m: dict[str, Any]) -> str:
    return f"± {1.96 * m['stderr']:.3f}" if m.get("stderr") is not None else '<span class="na">—</span>'


def _header(r: dict[str, Any]) -> str:
    s = r["summary"] if r["summary"].get("available", True) else {}
    rows = [["model", esc(s.get("preset", "?"))], ["device", esc(s.get("device", "?"))],
            ["steps", f"{s.get('steps', '?')} ({'complete' if s.get('completed') else 'incomplete or unknown'})"],
            ["final training loss", fmt(s.get("final_loss"), 4)], ["wall time", f"{s.get('wall_seconds', '?')} s"],
            ["code", f"amylum {esc(r['code']['amylum'])}, commit {esc(r['code']['commit'])}"],
            ["evaluations", esc(", ".join(str(x) for x in r["evaluation"]["steps"]) or "none")]]
    params = s.get("parameters") or {}
    if params:
        rows.insert(2, ["parameters", f"{params.get('trainable', 0):,} trainable of {params.get('total', 0):,}"])
    return f"<h1>amylum run report: {esc(r['name'])}</h1>" + table(["", ""], rows)


def _task_scores(task: str, t: dict[str, Any], small: int) -> str:
    ds = t.get("dataset", {})
    parts = [f"<h3>task <code>{esc(task)}</code></h3>",
             f'<p class="small">set {esc(ds.get("path", "?"))} · sha256 {esc(str(ds.get("sha256", "?"))[:12])} · '
             f'{ds.get("selected", "?")} of {ds.get("records", "?")} records evaluated per step'
             f'{" · <span class=warn>truncated by the time budget</span>" if t.get("truncated") else ""}</p>']
    rows = [[esc(name), fmt(m["value"]), _ci(m), m["n"], esc(m.get("scorer", "?")), esc(m.get("version", "?")),
             esc(m.get("scale", "?"))] for name, m in t.get("metrics", {}).items()]
    for annotator, h in t.get("human", {}).items():
        agree = "; ".join(f"{esc(k)}: {a['agreement']:.0%} agree, κ {fmt(a['kappa'], 2)} (n {a['n']})"
                          for k, a in h.get("agreement", {}).items())
        rows.append([f"human ({esc(annotator)})", fmt(h["value"]), NA, h["n"], esc(h["scorer"]), "—", "0-1"])
        if agree:
            rows.append(["", "", "", "", f'<span class="small">agreement with automated: {agree}</span>', "", ""])
    parts.append(table(["metric", "value", "95% CI", "n", "scorer", "version", "scale"], rows, {1, 3}))
    metrics = list(t.get("metrics", {}))
    for slice_name, buckets in t.get("slices", {}).items():
        srows = []
        for label, b in buckets.items():
            flag = ' <span class="warn" title="few items: uncertain">small</span>' if b["n"] < small else ""
            n = f'{b["n"]}{flag}'
            srows.append([esc(label), n] + [f"{fmt(b['metrics'][m]['value'])} {_ci(b['metrics'][m])}" for m in metrics])
        parts.append(f"<h3>by {esc(slice_name)}</h3>" + table(["bucket", "n"] + metrics, srows, {1}))
    return "".join(parts)


def _evaluation(r: dict[str, Any]) -> str:
    e = r["evaluation"]
    if not e["available"]:
        return "<h2>Evaluation</h2>" + _na(e["latest"])
    latest = e["latest"]
    parts = [f"<h2>Evaluation at step {esc(latest.get('step'))}</h2>",
             "<p>Every score with its scorer and version; every slice with its size. Buckets under "
             f"{e['small_bucket']} items are marked <span class=warn>small</span>: their numbers are uncertain.</p>"]
    parts += [_task_scores(task, t, e["small_bucket"]) for task, t in latest.get("tasks", {}).items()]
    parts.append("<h2>Regressions</h2>")
    if e["regressions"]:
        rows = [[esc(g["task"]), esc(g["metric"]), esc(f"{g['slice']}={g['bucket']}"), g["n"], fmt(g["best"]),
                 g["best_step"], fmt(g["last"]), f'<span class="warn">−{g["drop"]:.3f}</span>'] for g in e["regressions"]]
        parts.append(f"<p>Scores that fell more than {e['regression_threshold']:.0%} of the metric's range below "
                     "their best earlier value:</p>"
                     + table(["task", "metric", "slice", "n", "best", "at step", "latest", "drop"], rows, {3, 4, 6}))
    else:
        parts.append(f"<p>No overall or slice score fell more than {e['regression_threshold']:.0%} of its range "
                     "below its best earlier value.</p>")
    parts.append("<h2>Evaluation curves</h2>")
    for task, metrics in e["curves"].items():
        charts = []
        for metric, c in metrics.items():
            # A fixed 0..top axis for bounded scores: curves compare across charts, ticks stay round.
            scale = latest.get("tasks", {}).get(task, {}).get("metrics", {}).get(metric, {}).get("scale")
            y = _SCALE_RANGE.get(scale)
            charts.append(line_chart(f"{task}: {metric}", {"all": c["all"]}, y_range=y))
            for slice_name, buckets in c["slices"].items():
                charts.append(line_chart(f"{task}: {metric} by {slice_name}", {"all": c["all"], **buckets}, y_range=y))
        parts.append(f'<div class="charts">{"".join(charts)}</div>')
    return "".join(parts)


def _robustness(r: dict[str, Any]) -> str:
    rob = r["evaluation"]["robustness"]
    if rob.get("available") is False:
        return "<h2>Robustness</h2>" + _na(rob)
    rows = []
    for task, perts in rob["tasks"].items():
        for name, p in perts.items():
            opts = ", ".join(f"{k}={v}" for k, v in p.get("options", {}).items() if k != "templates")
            if not p.get("metrics"):
                rows.append([esc(task), esc(name), esc(opts), p["n"], NA, NA, NA])
            for metric, m in p.get("metrics", {}).items():
                cls = "warn" if m["delta"] < 0 else ""
                rows.append([esc(task), f"{esc(name)}", esc(opts), p["n"], f"{esc(metric)}: {fmt(m['clean'])}",
                             fmt(m["perturbed"]), f'<span class="{cls}">{m["delta"]:+.3f}</span>'])
    return (f"<h2>Robustness (step {esc(rob['step'])})</h2><p>Clean and perturbed scores on the same items: those a "
            "perturbation applies to.</p>" + table(["task", "perturbation", "options", "n", "clean", "perturbed", "Δ"],
                                                    rows, {3}))


def _failures(r: dict[str, Any]) -> str:
    f = r["failures"]
    parts = ["<h2>Known failures and skipped records</h2>"]
    rows = []
    for task, x in f["evaluation"].items():
        reasons = "; ".join(f"{esc(s['id'])}: {esc(s['reason'])} ({esc(s['message'])})" for s in x.get("skipped_examples", []))
        rows.append([esc(task), x.get("skipped", 0), reasons or "—", x.get("empty_outputs", 0), x.get("unterminated", 0)])
    if rows:
        parts.append(table(["task", "skipped eval records", "examples", "empty outputs", "no <eos> (hit max_new_tokens)"],
                           rows, {1, 3, 4}))
    skipped_train = r["data"]["skipped_training_records"]
    parts.append("<p>skipped training records: " + _skipped_training(skipped_train) + "</p>")
    train = f["training"]
    parts.append("<p>training failures and recoveries: " + (_na(train) if isinstance(train, dict) and
                                                            train.get("available") is False else esc(train)) + "</p>")
    if f["wrong_examples"]:
        parts.append("<h3>Wrong answers (latest evaluation, first few)</h3>")
        for w in f["wrong_examples"]:
            media = "".join(media_html(p) for paths in (w.get("media") or {}).values() for p in paths)
            parts.append(f'<div class="card"><div><span class="badge">{esc(w["task"])}/{esc(w["id"])}</span></div>{media}'
                         f'<div><b>prompt</b> {esc(w["prompt"])}</div><div><b>output</b> {esc(w["output"]) or "(empty)"}'
                         f' · <b>reference</b> {esc(" | ".join(w["references"]))}</div></div>')
    return "".join(parts)


def _kv_table(d: dict[str, Any]) -> str:
    rows = []
    for k, v in d.items():
        if isinstance(v, dict) and v.get("available") and "last" in v:
            rows.append([esc(k), f"{v['last']:.4g}", f"{v['mean']:.4g}", v["n"]])
    return table(["metric", "last", "mean", "logged"], rows, {1, 2, 3})


def _energy_total(total: dict[str, Any] | None) -> str:
    if not total:
        return ""
    return (f'<p>run total: {total["energy_j"]:.4g} J over {total["steps"]} metered steps '
            f'({total["energy_j_per_step"]:.4g} J/step, {total["energy_kwh"]:.3g} kWh; meter: {esc(total["backend"])}; '
            "all ranks summed)</p>")


def _skipped_training(skipped: Any) -> str:
    if isinstance(skipped, dict) and skipped.get("available") is False:
        return _na(skipped)
    if isinstance(skipped, dict) and "count" in skipped:
        reasons = ", ".join(f"{esc(k)}: {n}" for k, n in skipped.get("by_reason", {}).items())
        examples = "".join(f"<li>{esc(x)}</li>" for x in skipped.get("examples", []))
        return (f"{skipped['count']}{f' ({reasons})' if reasons else ''}"
                + (f"<ul class=small>{examples}</ul>" if examples else ""))
    return esc(skipped)


def _data_and_hardware(r: dict[str, Any]) -> str:
    parts = ["<h2>Data</h2>"]
    train = r["data"]["train"]
    if train.get("available") is False:
        parts.append(_na(train))
    else:
        parts.append(f'<p>training set {esc(train["path"])}: {train["records"]:,} records'
                     f'{" (first " + str(train["truncated_at"]) + " read)" if train.get("truncated_at") else ""}</p>')
        parts.append('<div class="charts">' + table(["task", "records", "share"], [
            [esc(k), v, f"{v / train['records']:.1%}"] for k, v in train["by_task"].items()], {1, 2})
            + table(["modalities", "records", "share"], [
                [esc(k), v, f"{v / train['records']:.1%}"] for k, v in train["by_modality"].items()], {1, 2}) + "</div>")
    latest = r["evaluation"]["latest"]
    if r["evaluation"]["available"]:
        parts.append("<p>evaluation sets: " + "; ".join(
            f"<code>{esc(k)}</code> {esc(t['dataset']['path'])} (sha256 {esc(t['dataset']['sha256'][:12])}, "
            f"{t['dataset']['records']} records)" for k, t in latest["tasks"].items()) + "</p>")
    hw = r["hardware"]
    parts.append("<h2>Hardware</h2>" + (_na(hw) if not hw.get("available") else table(
        ["", ""], [[esc(k), esc(v)] for k, v in hw.items() if k != "available"])))
    eff = r["efficiency"]
    parts.append("<h2>Throughput</h2>" + (_na(eff["throughput"]) if eff["throughput"].get("available") is False
                                          else _kv_table(eff["throughput"])))
    if eff["loss_curve"]:
        parts.append("<h3>Training loss</h3>" + line_chart("training loss", {"loss": eff["loss_curve"]}, width=560))
    parts.append("<h2>Energy</h2>" + (_na(eff["energy"]) if eff["energy"].get("available") is False
                                      else _kv_table(eff["energy"]) + _energy_total(eff["energy"].get("run_total"))))
    return "".join(parts)


def _config(r: dict[str, Any]) -> str:
    c, p = r["config"], r["plan"]
    return ("<h2>Resolved config</h2>" + (f"<pre>{esc(c['text'])}</pre>" if c.get("available") else _na(c))
            + "<h2>Plan</h2>" + (f"<p>{esc(p['file'])}</p><pre>{esc(p['text'])}</pre>" if p.get("available") else _na(p)))


def _limitations(r: dict[str, Any]) -> str:
    notes = ["Scores are on the held-out sets listed above, at the steps listed; they are not a claim about other data.",
             "CIDEr and ROUGE-L tokenise by lower-casing and dropping punctuation, not with coco-caption's PTB tokenizer.",
             "Human scores, where shown, come from the annotators named; they cover only the exported sample."]
    e = r["evaluation"]
    if e["available"]:
        small = sorted({f"{t}: {s}={b}" for t, task in e["latest"]["tasks"].items()
                        for s, buckets in task.get("slices", {}).items() for b, v in buckets.items()
                        if v["n"] < e["small_bucket"]})
        if small:
            notes.append(f"{len(small)} slice bucket(s) have fewer than {e['small_bucket']} items: "
                         + ", ".join(small[:12]) + ("…" if len(small) > 12 else ""))
        if any(t.get("truncated") for t in e["latest"]["tasks"].values()):
            notes.append("The latest evaluation ran out of its time budget: some items were not scored.")
    return "<h2>Known limitations</h2><ul>" + "".join(f"<li>{esc(n)}</li>" for n in notes) + "</ul>"


def render(report: dict[str, Any]) -> str:
    body = (_header(report) + _evaluation(report) + _robustness(report) + _failures(report)
            + _data_and_hardware(report) + _config(report) + _limitations(report)
            + '<p class="small">Machine-readable: report.json beside this page. Built by amylum.evaluation.report.</p>')
    return page(f"amylum run report: {report['name']}", body)

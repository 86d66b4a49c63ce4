"""The run report gathers what the run recorded and says 'not available' for what it did not."""

import json

from amylum.evaluation.report import gather, write_run_report


def step_results(step, overall, image, text, robustness=None):
    def m(v, n):
        return {"value": v, "n": n, "stderr": 0.05, "scorer": "auto:amylum.ExactMatch", "version": "1", "scale": "0-1",
                "higher_is_better": True}

    task = {"dataset": {"path": "eval.jsonl", "sha256": "ab" * 32, "records": 50, "selected": 50},
            "metrics": {"accuracy": {**m(overall, 50), "per_item": {"a": 0.0, "b": 1.0}}},
            "slices": {"modality": {"image": {"n": 40, "metrics": {"accuracy": m(image, 40)}},
                                    "text": {"n": 10, "metrics": {"accuracy": m(text, 10)}}}},
            "failures": {"skipped": 1, "skipped_examples": [{"id": "bad", "reason": "missing_file", "message": "gone"}],
                         "empty_outputs": 2, "unterminated": 0}}
    if robustness:
        task["robustness"] = robustness
    return {"step": step, "final": robustness is not None, "tasks": {"heldout": task}}


def make_run(tmp_path):
    run = tmp_path / "run"
    (run / "eval" / "predictions").mkdir(parents=True)
    (run / "data").mkdir()
    (run / "config.toml").write_text('[model]\npreset = "tiny-vlm"\n')
    (run / "summary.json").write_text(json.dumps({"preset": "tiny-vlm", "device": "cpu", "steps": 20, "completed": True,
                                                  "final_loss": 0.5, "wall_seconds": 12}))
    (run / "data" / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in [
        {"id": "1", "task": "digit", "image": "a.png"}, {"id": "2", "task": "digit", "image": "b.png"},
        {"id": "3", "task": "text_sum"}, {"id": "4", "task": "sum", "images": ["a.png", "b.png"]}]))
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in [
        {"step": 10, "kind": "train", "loss": 2.0, "tokens_per_s": 100.0}, {"step": 20, "kind": "train", "loss": 1.0,
                                                                            "tokens_per_s": 120.0}]))
    rob = {"image_noise": {"type": "image_noise", "options": {"std": 0.1}, "n": 40,
                           "metrics": {"accuracy": {"clean": 0.6, "perturbed": 0.4, "delta": -0.2, "scorer": "x"}}}}
    (run / "eval" / "step-00000010.json").write_text(json.dumps(step_results(10, 0.5, 0.5, 0.5)))
    # step 20: overall up, but the small text slice dropped by 0.3 → flagged
    (run / "eval" / "step-00000020.json").write_text(json.dumps(step_results(20, 0.58, 0.65, 0.2, rob)))
    (run / "eval" / "predictions" / "step-00000020.jsonl").write_text(json.dumps(
        {"task": "heldout", "id": "a", "prompt": "What is 3 plus 4?", "output": "8", "references": ["7"], "media": {}}) + "\n")
    return run


def test_gather(tmp_path):
    r = gather(make_run(tmp_path))
    assert r["data"]["train"]["by_task"] == {"digit": 2, "text_sum": 1, "sum": 1}
    assert r["data"]["train"]["by_modality"] == {"image": 3, "text": 1}
    assert r["efficiency"]["throughput"]["tokens_per_s"]["last"] == 120.0
    assert r["efficiency"]["energy"]["available"] is False  # never invented
    assert r["plan"]["available"] is False and r["hardware"]["device"] == "cpu"
    curves = r["evaluation"]["curves"]["heldout"]["accuracy"]
    assert curves["all"] == [(10, 0.5), (20, 0.58)]
    assert curves["slices"]["modality"]["text"] == [(10, 0.5), (20, 0.2)]
    flags = r["evaluation"]["regressions"]
    assert [(f["slice"], f["bucket"], f["small"]) for f in flags] == [("modality", "text", True)]
    assert r["evaluation"]["robustness"]["step"] == 20
    assert r["failures"]["wrong_examples"][0]["id"] == "a"  # per-item accuracy 0.0
    assert "per_item" not in json.dumps(r["evaluation"]["latest"])


def test_write_report_files(tmp_path):
    json_path, html_path = write_run_report(make_run(tmp_path))
    report = json.loads(json_path.read_text())
    assert report["format"] == "amylum-run-report"
    page = html_path.read_text()
    for text in ("Evaluation at step 20", "Regressions", "<svg", "Robustness (step 20)", "image_noise",
                 "Known failures", "missing_file", "not available", "Energy", "Resolved config", "tiny-vlm",
                 "auto:amylum.ExactMatch", "small"):
        assert text in page, text
    assert "http://" not in page.replace("http://www.w3.org/2000/svg", "")  # nothing to fetch: works offline


def test_empty_run_dir_reports_missing_pieces(tmp_path):
    (tmp_path / "r").mkdir()
    r = gather(tmp_path / "r")
    assert r["evaluation"]["available"] is False and r["config"]["available"] is False
    _, html_path = write_run_report(tmp_path / "r")
    assert "not available" in html_path.read_text()

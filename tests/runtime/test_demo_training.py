"""The real pipeline (tiny-vlm preset, generated demo data, resumable loader) through amylum.runtime.run."""

import copy

from amylum.config import load_config
from amylum.runtime.metrics import read_jsonl
from amylum.runtime.run import train


def _cfg(run_dir, **extra):
    args = [
        f"--job.run_dir={run_dir}", "--training.steps=16", "--training.warmup_steps=2", "--training.batch_size=8",
        "--data.n_train=96", "--data.n_eval=8", "--eval.every=8", "--checkpoint.every=6",
        "--metrics.log_every=1", "--metrics.progress_bar=false", "--metrics.tensorboard=false",
        "--checkpoint.export=false", "--metrics.report=false",
    ]
    return load_config(None, args + [f"--{k}={v}" for k, v in extra.items()])


def _losses(run_dir):
    return {r["step"]: r["loss"] for r in read_jsonl(run_dir / "metrics.jsonl") if r["kind"] == "train"}


def test_loss_decreases_on_the_demo(tmp_path):
    summary = train(_cfg(tmp_path / "run", **{"training.lr": 3e-3}), log=lambda s: None)
    losses = _losses(tmp_path / "run")
    assert summary["completed"] and sorted(losses) == list(range(1, 17))
    first, last = sum(losses[s] for s in (1, 2, 3)) / 3, sum(losses[s] for s in (14, 15, 16)) / 3
    assert last < 0.6 * first, (first, last)
    assert 0.0 <= summary["eval"]["heldout/accuracy"] <= 1.0


def test_killed_and_resumed_demo_run_has_the_same_loss_curve(tmp_path):
    full_dir, killed_dir = tmp_path / "full", tmp_path / "killed"
    train(_cfg(full_dir), log=lambda s: None)
    cfg = _cfg(killed_dir)
    partial = train(copy.deepcopy(cfg), stop_after=9, log=lambda s: None)  # last checkpoint: step 6
    assert not partial["completed"]
    resumed = train(cfg, log=lambda s: None)
    assert resumed["completed"]
    full, again = _losses(full_dir), _losses(killed_dir)
    assert sorted(again) == list(range(1, 17))
    assert again == full  # bit-exact on CPU, including steps 7-9 that the killed run had already done once
    evals = lambda d: [r for r in read_jsonl(d / "metrics.jsonl") if r["kind"] == "eval"]  # noqa: E731
    assert evals(killed_dir) == evals(full_dir)


def test_demo_run_evaluates_by_slice_and_writes_the_report(tmp_path):
    import json

    import torch

    run = tmp_path / "run"
    cfg = _cfg(run, **{"training.steps": 8, "eval.every": 4, "data.n_eval": 12, "metrics.report": "true",
                       "metrics.log_every": 4})
    summary = train(cfg, log=lambda s: None)
    evals = [r for r in read_jsonl(run / "metrics.jsonl") if r["kind"] == "eval"]
    assert [r["step"] for r in evals] == [4, 8]
    for key in ("heldout/accuracy", "heldout/accuracy/modality=image", "heldout/n/modality=image",
                "heldout/accuracy/task=digit", "heldout/accuracy/answer_type=number"):
        assert all(key in r for r in evals), key
    assert "heldout/accuracy/robust:image_noise" in evals[-1]  # robustness on the final evaluation only
    assert not any("robust:" in k for k in evals[0])
    assert summary["eval"]["heldout/accuracy"] == evals[-1]["heldout/accuracy"]
    assert (run / "eval" / "step-00000004.json").is_file() and (run / "eval" / "predictions" / "step-00000008.jsonl").is_file()

    report = json.loads((run / "report.json").read_text())
    curves = report["evaluation"]["curves"]["heldout"]["accuracy"]
    assert [s for s, _ in curves["all"]] == [4, 8]
    assert [s for s, _ in curves["slices"]["modality"]["image"]] == [4, 8]
    assert report["evaluation"]["robustness"]["step"] == 8
    assert report["hardware"]["available"] and report["hardware"]["device"] == "cpu"
    assert report["data"]["train"]["records"] == 96
    assert report["data"]["skipped_training_records"]["count"] == 0
    html = (run / "report.html").read_text()
    for text in ("Evaluation curves", "heldout: accuracy by modality", "<svg", "Robustness", "Energy", "Resolved config"):
        assert text in html, text
    if not torch.cuda.is_available():  # the energy the CPU run could not measure is "not available", never 0
        assert report["efficiency"]["energy"] == {"available": False, "why": "no CUDA GPU visible: energy not measured"}
        assert summary["energy"]["available"] is False
        assert "not available: no CUDA GPU visible" in html
    assert (run / "report.md").is_file() and "heldout/accuracy" in (run / "report.md").read_text()

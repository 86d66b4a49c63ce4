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
    assert 0.0 <= summary["eval"]["accuracy"] <= 1.0


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

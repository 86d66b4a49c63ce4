"""`amylum train` on the tiny demo with data.balance = "hierarchical": runs, is deterministic and resumes exactly."""

import copy

import pytest

from amylum.cli import main
from amylum.config import ConfigError, load_config
from amylum.data.balanced_sampler import BalancedBatchSampler
from amylum.runtime.build import build_run
from amylum.runtime.metrics import read_jsonl
from amylum.runtime.run import train

# 60 samples, 4 × 3 per step: 5 steps per epoch, so 8 steps cross an epoch
ARGS = ["--training.steps=8", "--training.warmup_steps=1", "--training.batch_size=4", "--training.grad_accum=3",
        "--data.n_train=60", "--data.n_eval=0", "--eval.every=0", "--checkpoint.every=3", "--metrics.log_every=1",
        "--metrics.progress_bar=false", "--metrics.tensorboard=false", "--checkpoint.export=false",
        "--metrics.report=false", "--data.balance=hierarchical"]


def _cfg(run_dir, *extra):
    return load_config(None, [f"--job.run_dir={run_dir}", *ARGS, *extra])


def _steps(run_dir):
    return {r["step"]: (r["loss"], round(r["samples_per_s"] * r["step_time_s"]))
            for r in read_jsonl(run_dir / "metrics.jsonl") if r["kind"] == "train"}


def test_amylum_train_with_balance_runs_the_balanced_microbatches(tmp_path, capsys):
    run = tmp_path / "cli"
    assert main(["train", f"--job.run_dir={run}", *ARGS]) == 0
    steps = _steps(run)
    assert sorted(steps) == list(range(1, 9)) and all(n == 12 for _, n in steps.values())
    # the loader the run builds yields each replica's microbatches in the sampler's balanced order
    loader = build_run(_cfg(run)).train_loader
    plan = BalancedBatchSampler(loader.sampler.work, 12, 3, seed=0).plan(0, 0)[0]
    names = [r.id for r in loader.dataset.records]
    it = iter(loader)
    first = [[r for row in next(it).records for r in row] for _ in range(3)]
    assert first == [[names[i] for i in mb] for mb in plan]


def test_balanced_run_is_deterministic_and_resumes_exactly(tmp_path):
    full, again, killed = tmp_path / "full", tmp_path / "again", tmp_path / "killed"
    train(_cfg(full), log=lambda s: None)
    train(_cfg(again), log=lambda s: None)
    losses = lambda d: {s: l for s, (l, _) in _steps(d).items()}  # noqa: E731
    assert losses(again) == losses(full)
    cfg = _cfg(killed)
    partial = train(copy.deepcopy(cfg), stop_after=7, log=lambda s: None)  # last checkpoint: step 6, mid-epoch 2
    assert not partial["completed"]
    assert train(cfg, log=lambda s: None)["completed"]
    assert losses(killed) == losses(full)  # bit-exact on CPU
    plain = tmp_path / "plain"
    train(_cfg(plain, "--data.balance=none"), log=lambda s: None)
    # each step holds the same samples in both modes, only split differently into micro-batches, and
    # the trainer weights micro-batches by target tokens: the same gradient up to float rounding
    for step, loss in losses(plain).items():
        assert abs(loss - losses(full)[step]) <= 1e-4 * abs(loss), step


def test_bad_balance_settings_are_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="data.balance = 'sorted'"):
        _cfg(tmp_path, "--data.balance=sorted")
    # a step needs batch_size × grad_accum samples: 4 × 3 × 1 = 12 > 8 records
    assert main(["train", f"--job.run_dir={tmp_path / 'small'}", *ARGS, "--data.n_train=8"]) == 2

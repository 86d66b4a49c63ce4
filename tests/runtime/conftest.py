"""Fixtures of the runtime tests."""

from __future__ import annotations

import pytest

from amylum.config import Config, load_config


@pytest.fixture
def small_config(tmp_path) -> Config:
    return load_config(None, [
        f"--job.run_dir={tmp_path / 'run'}", "--training.steps=12", "--training.warmup_steps=2",
        "--training.lr=0.05", "--metrics.log_every=1", "--metrics.progress_bar=false",
        "--metrics.tensorboard=false", "--checkpoint.every=4", "--eval.every=0",
    ])

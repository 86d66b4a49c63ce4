"""`amylum train` refuses, before any work, CUDA settings known not to train."""

import pytest
import torch

import amylum.runtime.build as build
from amylum.config import load_config


@pytest.mark.parametrize("attention", ["flex", "flex-flash", "fast"])
def test_flex_on_cuda_without_compiled_blocks_is_a_clear_error(monkeypatch, tmp_path, attention):
    monkeypatch.setattr(build, "resolve_device", lambda cfg: torch.device("cuda"))
    monkeypatch.setattr(build, "prepare_data", lambda cfg: pytest.fail("data was prepared before the check"))
    cfg = load_config(None, [f"--model.attention={attention}", "--model.compile=false", f"--job.run_dir={tmp_path}"])
    with pytest.raises(ValueError, match="needs model.compile=true"):
        build.build_run(cfg)

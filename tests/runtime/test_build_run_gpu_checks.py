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


@pytest.mark.parametrize("attention", ["flex", "flex-flash"])
def test_flex_under_torchrun_on_cuda_is_refused_before_any_group(monkeypatch, tmp_path, attention):
    """torchrun runs compile no blocks: the same inductor failure would hit every rank at its first step."""
    import amylum.runtime.distributed.run as run

    monkeypatch.setattr(run, "rank_device", lambda want, local_rank: torch.device("cuda", 0))
    monkeypatch.setattr(run, "init_process_group", lambda *a, **k: pytest.fail("a process group was started"))
    monkeypatch.setattr(run, "resolve_plan", lambda *a, **k: pytest.fail("the plan was resolved first"))
    env = run.LaunchEnv(rank=0, world_size=2, local_rank=0, local_world_size=2)
    cfg = load_config(None, [f"--model.attention={attention}", f"--job.run_dir={tmp_path}"])
    with pytest.raises(ValueError, match="torchrun runs do not compile blocks"):
        run.train_distributed(cfg, env=env)


def test_reference_attention_passes_the_check():
    cfg = load_config(None, ["--model.attention=reference"])
    build.check_flex_is_compiled(cfg, torch.device("cuda"), compiled=False)

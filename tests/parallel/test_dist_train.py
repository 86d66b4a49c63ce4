"""`amylum train` under torchrun: plan checks before launch, the real CLI on 4 gloo processes, and
per-step losses and gradient norms equal to one process's (with a DCP resume in between)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch.distributed as dist

import dist_train_workers as W
from amylum.cli import main
from amylum.parallel.layout import LayoutError
from amylum.planner.spec import ClusterSpec, GPUType
from amylum.runtime.distributed import LaunchEnv, train_distributed
from amylum.runtime.metrics import read_jsonl
from dist_harness import run_world

# fp32 on CPU: only the order of sums differs (FSDP reduce-scatter, tied-embedding all-reduce).
LOSS_TOL = 1e-5
NORM_RTOL = 1e-5


def _train_records(run_dir: Path) -> dict[int, dict]:
    return {r["step"]: r for r in read_jsonl(run_dir / "metrics.jsonl") if r["kind"] == "train"}


def test_bad_plans_fail_before_any_process_group(tmp_path):
    plan = W.write_test_plan(tmp_path / "plan.json", W.dp_pp_plan())
    env = LaunchEnv(rank=0, world_size=2, local_rank=0, local_world_size=2)
    cases = [
        (W.small_config(tmp_path / "a", f"--parallel.plan={plan}"), env, "plan is for 4 ranks but 2 processes"),
        (W.small_config(tmp_path / "b", f"--parallel.plan={plan}", "--training.batch_size=6"),
         replace(env, world_size=4), "global batch of 8 samples; the config's training.batch_size x grad_accum = 6"),
        (W.small_config(tmp_path / "c", f"--parallel.plan={plan}", "--model.preset=tiny-vlm"),
         replace(env, world_size=4), "made for model 'tiny-valm'; the config trains 'tiny-vlm'"),
    ]
    tiny_gpu = ClusterSpec(1, 4, GPUType("TINY", 1e12, 1e6))  # 1 MB per GPU: nothing fits
    small = W.write_test_plan(tmp_path / "small.json", W.dp_pp_plan(), tiny_gpu)
    cases.append((W.small_config(tmp_path / "d", f"--parallel.plan={small}"), replace(env, world_size=4),
                  "GB over the"))
    for cfg, launch, reason in cases:
        with pytest.raises(LayoutError, match="cannot run") as e:
            train_distributed(cfg, env=launch)
        assert reason in str(e.value)
        assert not dist.is_initialized()  # rejected before the process group


def test_cli_rejects_a_plan_for_another_world_size(tmp_path, capsys):
    plan = W.write_test_plan(tmp_path / "plan.json", W.dp_pp_plan())
    code = main(["train", "--plan", str(plan), "--model.preset=tiny-valm", f"--job.run_dir={tmp_path / 'run'}",
                 "--training.batch_size=8"])
    assert code == 2
    assert "plan is for 4 ranks but 1 processes were launched" in capsys.readouterr().err
    assert not dist.is_initialized() and not (tmp_path / "run").exists()


def test_torchrun_trains_tiny_valm_with_the_planners_modality_parallel_plan(tmp_path):
    plan = tmp_path / "plan.json"
    assert main(["plan", "--preset", "tiny-valm", "--gpus", "4", "--gpus-per-node", "4", "--global-batch", "8",
                 "--placement", "modality_parallel", "--no-zero-bubble", "--out", str(plan)]) == 0
    stages = json.loads(plan.read_text())["plan"]["stages"]
    assert {s["chain"] for s in stages} >= {"vision", "audio", "llm"}  # encoders on ranks of their own
    run_dir = tmp_path / "run"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "4", "--standalone",
           "-m", "amylum", "train", "--plan", str(plan), "--model.preset=tiny-valm", f"--job.run_dir={run_dir}",
           "--data.n_train=48", "--data.n_eval=0", "--training.steps=6", "--training.batch_size=8",
           "--training.warmup_steps=1", "--training.lr=0.003", "--metrics.log_every=1",
           "--metrics.progress_bar=false", "--metrics.tensorboard=false", "--eval.every=0",
           "--checkpoint.every=3", "--parallel.timeout_s=60"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=240, env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    losses = [r["loss"] for r in _train_records(run_dir).values()]
    assert len(losses) == 6 and losses[-1] < losses[0] - 0.2, losses
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["completed"] and summary["world_size"] == 4 and summary["plan"]["placement"] == "modality_parallel"
    assert (run_dir / "checkpoints" / "step-00000006" / "manifest.json").is_file()
    assert len(list((run_dir / "checkpoints" / "step-00000006").glob("rank-*.json"))) == 4
    assert (run_dir / "export" / "amylum.json").is_file()  # rank 0 exported the sharded checkpoint
    assert (run_dir / "plan.json").is_file() and (run_dir / "report.html").is_file()


def test_losses_and_grad_norms_match_one_process_with_a_dcp_resume(tmp_path):
    """DP 2 x PP 2 (tied embeddings across stages, one-sample microbatches, some text-only,
    killed after step 2 and resumed from its DCP checkpoint), then encoder stages + LLM TP 2."""
    from amylum.runtime.run import train

    jobs = [(tmp_path / "dp_pp", W.dp_pp_plan(), 8, 2), (tmp_path / "tp", W.llm_tp_plan(), 4, None)]
    expected = {}
    for run_dir, plan, batch, _ in jobs:
        train(W.small_config(run_dir / "single", f"--training.batch_size={batch}"), log=lambda _: None)
        expected[run_dir] = _train_records(run_dir / "single")
    args = [(str(d / "dist"), str(W.write_test_plan(d / "plan.json", plan)), batch, stop) for d, plan, batch, stop in jobs]
    results = run_world(W.train_worker, 4, args, timeout=240)
    for j, (run_dir, _, _, stop) in enumerate(jobs):
        first, resumed = results[0][j]["first"], results[0][j]["resumed"]
        if stop:
            assert sorted(first) == ["1", "2"] and sorted(resumed) == ["3"]
        assert results[0][j]["steps"] == 3
        got = _train_records(run_dir / "dist")
        assert sorted(got) == [1, 2, 3]  # after the resume, metrics.jsonl reads as one run
        want = expected[run_dir]
        for step in (1, 2, 3):
            loss = {**first, **resumed}[str(step)]
            assert abs(loss - want[step]["loss"]) < LOSS_TOL, (run_dir.name, step, loss, want[step]["loss"])
            assert abs(got[step]["grad_norm"] - want[step]["grad_norm"]) < NORM_RTOL * want[step]["grad_norm"], \
                (run_dir.name, step, got[step]["grad_norm"], want[step]["grad_norm"])
        # every rank saw the same global figures
        assert all(r[j]["first"] == first and r[j]["resumed"] == resumed for r in results)

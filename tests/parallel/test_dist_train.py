"""`amylum train` under torchrun: plan checks before launch, the real CLI on 4 gloo processes, and
per-step losses and gradient norms equal to one process's (with a DCP resume in between)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch
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


def _run_plans_against_one_process(tmp_path, worker, jobs, *, samples_per_step: int | None = None) -> list:
    """Train one process for 3 steps, then each (name, plan, extra overrides, stop step) job on one
    4-rank gloo world; assert every job's losses and grad norms equal the single run's (a job
    with a stop step is killed after it and resumed from its DCP checkpoint). Returns the
    worker's per-rank results for further checks."""
    from amylum.runtime.run import train

    overrides = ("--training.batch_size=4",)
    train(W.small_config(tmp_path / "single", *overrides), log=lambda _: None)
    want = _train_records(tmp_path / "single")
    for name, *_ in jobs:  # the demo data of the single run: generated once
        shutil.copytree(tmp_path / "single" / "data", tmp_path / name / "dist" / "data")
    args = [(str(tmp_path / name / "dist"), str(W.write_test_plan(tmp_path / name / "plan.json", plan)),
             overrides + extra, stop) for name, plan, extra, stop in jobs]
    results = run_world(worker, 4, args, timeout=240)
    for j, (name, _, _, stop) in enumerate(jobs):
        first, resumed = results[0][j]["first"], results[0][j]["resumed"]
        assert sorted(first) == (["1", "2"] if stop else ["1", "2", "3"]) and results[0][j]["steps"] == 3
        got = _train_records(tmp_path / name / "dist")
        for step in (1, 2, 3):
            loss = {**first, **resumed}[str(step)]
            assert abs(loss - want[step]["loss"]) < LOSS_TOL, (name, step, loss, want[step]["loss"])
            assert abs(got[step]["grad_norm"] - want[step]["grad_norm"]) < NORM_RTOL * want[step]["grad_norm"], \
                (name, step, got[step]["grad_norm"], want[step]["grad_norm"])
            if samples_per_step is not None:
                samples = got[step]["samples_per_s"] * got[step]["step_time_s"]
                assert abs(samples - samples_per_step) < 1e-6, (name, step, samples)
    return results


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
           "--job.device=cpu",
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
    killed after step 2 and resumed from its DCP checkpoint), then encoder stages + LLM TP 2,
    then DP 2 x PP 2 again with ``data.balance = "hierarchical"`` (work-balanced microbatches
    shaped by the plan's load profile, against one process balancing the same global batch;
    killed after step 2 and resumed)."""
    from amylum.runtime.run import train

    balanced = ("--training.batch_size=8", "--data.balance=hierarchical")
    jobs = [(tmp_path / "dp_pp", W.dp_pp_plan(), ("--training.batch_size=8",), 2),
            (tmp_path / "tp", W.llm_tp_plan(), ("--training.batch_size=4",), None),
            (tmp_path / "balanced", W.dp_pp_plan(), balanced, 2)]
    expected = {}
    for run_dir, plan, overrides, _ in jobs:
        train(W.small_config(run_dir / "single", *overrides), log=lambda _: None)
        expected[run_dir] = _train_records(run_dir / "single")
    args = [(str(d / "dist"), str(W.write_test_plan(d / "plan.json", plan)), overrides, stop)
            for d, plan, overrides, stop in jobs]
    results = run_world(W.train_worker, 4, args, timeout=360)
    # The balanced run's checkpoint after step 2 holds each replica's balanced loader position:
    # 2 iterations x 4 microbatches of epoch 0 (the resume above continued from it).
    rank_files = sorted((tmp_path / "balanced" / "dist" / "checkpoints" / "step-00000002").glob("rank-*.json"))
    assert len(rank_files) == 4
    for rank_file in rank_files:
        loader = json.loads(rank_file.read_text())["state"]["loader"]
        assert loader == {"epoch": 0, "index": 8, "seed": 0, "balance": "hierarchical"}, (rank_file.name, loader)
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


def test_balanced_replica_loaders_split_one_process_global_batch_by_the_plans_profile(tmp_path):
    """Without any process group: the replicas' balanced loaders under the DP 2 x PP 2 plan hold,
    step by step, exactly the global batch of one process's balanced loader, each replica in the
    plan's count of microbatches, shaped by the pipeline's load profile (light fill microbatch)."""
    from amylum.data.dataset import MultimodalDataset
    from amylum.data.processor import MultimodalProcessor
    from amylum.data.tokenizer import load_tokenizer
    from amylum.runtime.build import build_model, build_train_loader, prepare_data
    from amylum.runtime.distributed.data import replica_loader
    from amylum.runtime.distributed.planning import resolve_plan

    plan = W.write_test_plan(tmp_path / "plan.json", W.dp_pp_plan())
    cfg = W.small_config(tmp_path / "run", f"--parallel.plan={plan}", "--data.balance=hierarchical")
    checked = resolve_plan(cfg, 4, 4, "cpu")
    paths = prepare_data(cfg)
    tokenizer = load_tokenizer(paths.tokenizer)
    model = build_model(cfg, vocab_size=len(tokenizer), device=torch.device("cpu"))
    dataset = MultimodalDataset(paths.train, MultimodalProcessor(tokenizer, model.modality_specs(),
                                                                 max_length=cfg.data.max_length))
    replicas = [replica_loader(cfg, dataset, model, checked, replica=d) for d in range(2)]
    single = build_train_loader(cfg, dataset, model).sampler
    for loader in replicas:
        profile = loader.sampler.profile
        assert profile is not None and profile.shape == (4, 3)  # (microbatches, vision + audio + llm)
        assert profile[0, -1] < profile[1:-1, -1].max()  # the pipeline's fill microbatch is lighter
    steps = [list(single.iterations())[:3]] + [list(r.sampler.iterations())[:3] for r in replicas]
    for step in range(3):
        want = sorted(i for mb in steps[0][step] for i in mb)
        per_replica = [steps[1 + d][step] for d in range(2)]
        assert all(len(mbs) == 4 and all(mbs) for mbs in per_replica)  # 4 non-empty microbatches each
        assert sorted(i for mbs in per_replica for mb in mbs for i in mb) == want, step


def test_balanced_plan_needs_a_global_batch_of_whole_microbatches(tmp_path):
    plan = W.write_test_plan(tmp_path / "plan.json", replace(W.dp_pp_plan(), num_microbatches=3))
    cfg = W.small_config(tmp_path / "run", f"--parallel.plan={plan}", "--data.balance=hierarchical")
    env = LaunchEnv(rank=0, world_size=4, local_rank=0, local_world_size=4)
    with pytest.raises(LayoutError, match="does not split into dp 2 x 3 microbatches"):
        train_distributed(cfg, env=env)
    assert not dist.is_initialized()


def test_context_parallel_plans_match_one_process(tmp_path):
    """LLM CP 2 in four plans on 4 gloo processes, each against one process's 3 steps (the same
    config: microbatching changes no figure): encoder stages feeding both CP ranks of the LLM,
    which send back partial feature gradients (sparse K/V exchange, contiguous policy); 2 LLM
    stages x CP 2 (each CP index its own pipeline, the tied embedding summed per CP index);
    DP 2 x CP 2 (FSDP over replicas x CP ranks; killed after step 2 and resumed from its DCP
    checkpoint); and TP 2 x CP 2 (the K/V exchange overlapped with the own keys' attention). The
    loss is summed over the CP ranks' shares, samples counted once per replica."""
    no_checkpoints = ("--checkpoint.every=0",)  # saves only cost time where nothing resumes
    jobs = [("encoder_stages", W.encoder_stages_llm_cp_plan(),
             ("--parallel.cp_exchange=sparse", "--parallel.cp_policy=contiguous", *no_checkpoints), None),
            ("llm_stages", W.llm_pp_cp_plan(), no_checkpoints, None),
            ("dp_cp", W.dp_cp_plan(), (), 2),
            ("tp_cp", W.llm_tp_cp_plan(), ("--parallel.cp_overlap=true", *no_checkpoints), None)]
    # one global batch per step, not one per CP rank
    results = _run_plans_against_one_process(tmp_path, W.train_worker, jobs, samples_per_step=4)
    for j in range(len(jobs)):  # every rank saw the same losses
        assert all(r[j]["first"] == results[0][j]["first"] and r[j]["resumed"] == results[0][j]["resumed"]
                   for r in results)


def test_zero_bubble_plan_runs_the_simulators_lists(tmp_path):
    """A zb plan is checked as zb (no 1F1B fallback) and every rank's action lists are the ones
    `amylum simulate PLAN` replays; lists that do not fit the model's stages are refused."""
    from amylum.planner.planfile import read_plan
    from amylum.planner.schedule import StageGraph
    from amylum.planner.simulate import simulate
    from amylum.runtime.distributed.planning import resolve_plan
    from amylum.runtime.distributed.stage_actions import stage_action_lists

    path = W.write_test_plan(tmp_path / "plan.json", W.modality_parallel_zb_plan())
    cfg = W.small_config(tmp_path / "run", f"--parallel.plan={path}", "--training.batch_size=4")
    checked = resolve_plan(cfg, 4, 4, "cpu")
    assert checked.schedule == "zb" and not checked.notes
    assert checked.zb_lists == simulate(*read_plan(path)).schedule  # checked before launch
    every = {s: True for s in checked.layout.stage_ranks}
    graph = StageGraph(inputs=checked.layout.stage_inputs, has_bwd=every, has_w=every)
    assert stage_action_lists(graph, 4, "zb", checked) == simulate(*read_plan(path)).schedule
    frozen_vision = StageGraph(inputs=graph.inputs, has_bwd={**every, 0: False}, has_w={**every, 0: False})
    with pytest.raises(ValueError, match="stage 0: its zero-bubble list does other work"):
        stage_action_lists(frozen_vision, 4, "zb", checked)


def test_zero_bubble_plan_for_other_frozen_flags_is_refused_before_launch(tmp_path):
    """A zb plan ordered for a frozen vision branch (no B on its stage) cannot run a config that
    trains it: check_plan says so before any process group exists, instead of a RECV without SEND."""
    from amylum.parallel.layout import LayoutError
    from amylum.planner.commands import load_model
    from amylum.planner.planfile import write_plan
    from amylum.planner.spec import ClusterSpec
    from amylum.runtime.distributed.planning import resolve_plan

    spec = load_model("tiny-valm", None, None)
    frozen_vision = spec.with_trainable({m: not m.startswith("vision") for m in spec.modules()})
    path = write_plan(tmp_path / "plan.json", W.modality_parallel_zb_plan(), frozen_vision, ClusterSpec.of(4, "CPU", 4))
    cfg = W.small_config(tmp_path / "run", f"--parallel.plan={path}", "--training.batch_size=4")
    with pytest.raises(LayoutError, match="zero-bubble lists: stage 0: its zero-bubble list does other work"):
        resolve_plan(cfg, 4, 4, "cpu")


def test_zero_bubble_plans_split_w_under_fsdp_and_match_one_process(tmp_path):
    """zb plans run with W split from B, each stage under FSDP, against one process's 3 steps:
    DP 2 x PP 2 (the last stage defers W; FSDP over 2 replicas reduces once after the step's last
    W; killed after step 2 and resumed from its DCP checkpoint) and modality-parallel encoder
    stages + 2 LLM stages at dp 1 (FSDP over one-rank meshes; both LLM stages split, the first
    sending its input gradient upstream before its W). Encoder stages, first stages of the
    pipeline, run W right behind B: fused."""
    jobs = [("dp_pp", replace(W.dp_pp_plan(4), schedule="zb", split_w=True), (), 2),
            ("modality_parallel", W.modality_parallel_zb_plan(), ("--checkpoint.every=0",), None)]
    splitting = {"dp_pp": [2, 3], "modality_parallel": [2, 3]}  # the stages whose zb lists defer W
    results = _run_plans_against_one_process(tmp_path, W.zero_bubble_train_worker, jobs)
    for j, (name, *_) in enumerate(jobs):
        # W really ran apart from its B, on the stages whose zb lists defer it, in every step
        assert [r for r in range(4) if results[r][j]["split_w"]] == splitting[name], (name, [r[j] for r in results])
        assert all(results[r][j]["split_w"] >= 3 and results[r][j]["held_reductions"] == 3 for r in splitting[name])


def test_cp_plans_are_checked_before_any_process_group(tmp_path):
    """A CP plan the trainer runs resolves to a layout with its CP degree; CP on an encoder stage
    is rejected with its reason before launch; the CP settings are validated with the config."""
    from amylum.config import ConfigError
    from amylum.parallel.cp_exchange import EXCHANGES
    from amylum.runtime.distributed.planning import resolve_plan

    plan = W.write_test_plan(tmp_path / "cp.json", W.encoder_stages_llm_cp_plan())
    checked = resolve_plan(W.small_config(tmp_path / "a", f"--parallel.plan={plan}", "--training.batch_size=4"), 4, 4, "cpu")
    assert checked.layout.cp(2) == 2 and checked.layout.cp_group(1) == (0, 1)
    vision, audio, llm = W.encoder_stages_llm_cp_plan().stages
    cp_vision = replace(W.encoder_stages_llm_cp_plan(), world_size=5, stages=(
        replace(vision, cp=2, ranks=((2, 4),)), audio, llm))
    plan = W.write_test_plan(tmp_path / "cp_vision.json", cp_vision, ClusterSpec.of(5, "CPU", 5))
    cfg = W.small_config(tmp_path / "b", f"--parallel.plan={plan}", "--training.batch_size=4")
    with pytest.raises(LayoutError, match="stage 0: cp 2 on an encoder stage"):
        train_distributed(cfg, env=LaunchEnv(rank=0, world_size=5, local_rank=0, local_world_size=5))
    assert not dist.is_initialized()
    with pytest.raises(ConfigError, match="parallel.cp_exchange = 'ring'"):
        W.small_config(tmp_path / "c", "--parallel.cp_exchange=ring")
    with pytest.raises(ConfigError, match="parallel.cp_policy"):
        W.small_config(tmp_path / "c", "--parallel.cp_policy=random")
    for exchange in EXCHANGES:  # the config spells them out, to stay torch-free: both lists agree
        W.small_config(tmp_path / "d", f"--parallel.cp_exchange={exchange}")
    cfg = W.small_config(tmp_path / "d")
    assert cfg.parallel.cp_policy == "balanced" and cfg.parallel.cp_exchange == "allgather"
    assert cfg.parallel.cp_overlap is False

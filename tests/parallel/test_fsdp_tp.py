"""FSDP2 and tensor parallelism on gloo, each against the single-process reference (3 steps)."""

import pytest

import dist_workers
from dist_harness import run_world


def test_fsdp_two_ranks_matches_single_process():
    worst = run_world(dist_workers.fsdp_worker, 2)
    assert max(worst) < dist_workers.TOL


def test_fsdp_rank_with_only_text_does_not_hang():
    worst = run_world(dist_workers.fsdp_text_only_rank_worker, 2)
    assert max(worst) < dist_workers.TOL


@pytest.mark.parametrize("vision_tp", [1, 2])
def test_tensor_parallel_llm_tp2_with_per_module_vision_degree(vision_tp):
    worst = run_world(dist_workers.tp_worker, 2, vision_tp)
    assert max(worst) < dist_workers.TOL


def test_tensor_parallel_times_fsdp_on_a_2d_mesh():
    worst = run_world(dist_workers.tp_dp_worker, 4)
    assert max(worst) < dist_workers.TOL

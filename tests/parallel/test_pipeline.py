"""Pipeline parallelism on gloo: planner 1F1B action lists executed per stage, vs one process."""

import pytest

import pipeline_workers
from dist_harness import run_world


@pytest.mark.parametrize("layout, ranks", [("modality_parallel", 3), ("colocated_llm_split", 2)])
def test_pipeline_matches_single_process(layout, ranks):
    worst = run_world(pipeline_workers.pipeline_worker, ranks, layout)
    assert max(worst) < pipeline_workers.TOL


def test_data_parallel_times_pipeline_parallel():
    worst = run_world(pipeline_workers.dp_pp_worker, 4)
    assert max(worst) < pipeline_workers.TOL

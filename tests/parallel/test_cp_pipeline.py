"""CP inside pipeline stages on gloo: 2 stages × CP 2 (4 processes), 1F1B, against one process.

The CP shard travels with each microbatch through the unchanged pipeline executor; both K/V
exchanges. Tolerance: compare.TOL (2e-5), 3 AdamW steps.
"""

import pytest

import cp_workers
from dist_harness import run_world


@pytest.mark.parametrize("exchange", ["allgather", "sparse"])
def test_cp2_inside_two_pipeline_stages_matches_single_process(exchange):
    worst = run_world(cp_workers.cp_pipeline_worker, 4, exchange)
    assert max(worst) < cp_workers.TOL

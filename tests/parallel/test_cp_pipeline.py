"""CP inside pipeline stages on gloo: 2 stages × CP 2 (4 processes), 1F1B, against one process.

The CP shard travels with each microbatch through the unchanged pipeline executor; both K/V
exchanges. Tolerance: compare.TOL (2e-5), 3 AdamW steps.
"""

import cp_workers
from dist_harness import run_world


def test_cp2_inside_two_pipeline_stages_matches_single_process():
    per_rank = run_world(cp_workers.each_exchange, 4, "cp_pipeline_worker")
    for exchange in ("allgather", "sparse"):
        worst = max(r[exchange] for r in per_rank)
        assert worst < cp_workers.TOL, f"{exchange}: worst difference {worst}"

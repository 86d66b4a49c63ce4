"""CP composed with FSDP2 on gloo: 4 processes = CP 2 × DP 2, against one process (3 AdamW steps).

FSDP2 shards over the flattened dp × cp ranks and its summing reduce-scatter is also the CP
gradient reduction; each replica has its own microbatch (one multimodal, one packed row).
Tolerance: compare.TOL (2e-5, fp32 on CPU, only summation order differs).
"""

import cp_workers
from dist_harness import run_world


def test_cp2_times_fsdp_dp2_matches_single_process():
    per_rank = run_world(cp_workers.each_exchange, 4, "cp_fsdp_worker")
    for exchange in ("allgather", "sparse"):
        worst = max(r[exchange] for r in per_rank)
        assert worst < cp_workers.TOL, f"{exchange}: worst difference {worst}"

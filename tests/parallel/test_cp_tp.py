"""CP composed with tensor parallelism on gloo: CP 2 × TP 2 (4 processes) against one process.

Each TP rank exchanges its heads' K/V over its CP group; both exchanges, 3 AdamW steps,
tolerance compare.TOL (2e-5, fp32 on CPU).
"""

import cp_workers
from dist_harness import run_world


def test_cp2_times_tp2_matches_single_process():
    per_rank = run_world(cp_workers.each_exchange, 4, "cp_tp_worker")
    for exchange in ("allgather", "sparse"):
        worst = max(r[exchange] for r in per_rank)
        assert worst < cp_workers.TOL, f"{exchange}: worst difference {worst}"

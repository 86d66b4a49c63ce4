"""CP composed with tensor parallelism on gloo: CP 2 × TP 2 (4 processes) against one process.

Each TP rank exchanges its heads' K/V over its CP group; both exchanges, 3 AdamW steps,
tolerance compare.TOL (2e-5, fp32 on CPU).
"""

import pytest

import cp_workers
from dist_harness import run_world


@pytest.mark.parametrize("exchange", ["allgather", "sparse"])
def test_cp2_times_tp2_matches_single_process(exchange):
    worst = run_world(cp_workers.cp_tp_worker, 4, exchange)
    assert max(worst) < cp_workers.TOL

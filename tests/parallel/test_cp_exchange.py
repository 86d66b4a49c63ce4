"""Mask-aware K/V exchange on gloo (2 and 4 ranks): exact against one process, and sparse.

Each rank receives only the key blocks its queries may see (planned on the host); the
backward returns dK/dV to their owners. Loss and every gradient must equal the one-process
run on a packed-rows mask, a single-sample multimodal mask, two mixed rows, a batch under one
block per rank and one with an empty rank; the tokens received per layer must equal the
planner's count, and on packed rows with a locality-keeping policy be fewer than all-gather's.
Overlapped with the own keys' attention (``…+overlap``), the exchange gives the plain run's loss and
gradients, also on a rank that receives nothing.
"""

import pytest

import cp_workers
from dist_harness import run_world


@pytest.mark.parametrize("world_size", [2, 4])
def test_sparse_exchange_matches_single_process_and_the_planner(world_size):
    per_rank = run_world(cp_workers.sparse_worker, world_size)
    for rank, results in enumerate(per_rank):
        for (policy, case), (worst, received, planned, allgather) in results.items():
            assert worst < (cp_workers.OVERLAP_TOL if "overlap" in policy else cp_workers.TOL), \
                f"{policy} ({case}) on {world_size} ranks differs by {worst}"
            assert received == planned, f"{policy} ({case}) rank {rank}: received {received}, planned {planned}"
            assert received <= allgather
    # packed rows kept contiguous: every rank receives less than under all-gather, at least one far less
    packed = [r[("contiguous", "packed")] for r in per_rank]
    assert all(received < allgather for _w, received, _p, allgather in packed)
    assert min(received / allgather for _w, received, _p, allgather in packed) < 0.5
    # overlapped on every case, and some rank's queries need no other rank's keys (nothing received)
    overlapped = [v for r in per_rank for (policy, _case), v in r.items() if "overlap" in policy]
    assert len(overlapped) == 5 * world_size and min(received for _w, received, _p, _a in overlapped) == 0

"""Context parallelism on gloo (2 and 4 ranks): loss and gradients equal the one-process run.

One spawn per world size covers every policy, a long multimodal batch (two rows flattened,
images bidirectional, a packed row), a batch shorter than one block per rank, and a batch
with fewer tokens than ranks (an empty shard must still join every collective).
"""

import pytest

import cp_workers
from dist_harness import run_world


@pytest.mark.parametrize("world_size", [2, 4])
def test_cp_matches_single_process_for_every_policy(world_size):
    per_rank = run_world(cp_workers.cp_worker, world_size)
    for (policy, case), (worst, counts) in per_rank[0].items():
        assert worst < cp_workers.TOL, f"{policy} ({case} batch) on {world_size} ranks differs by {worst}"
    # ranks may hold different token counts under the balancing policies; all ranks agree on them
    for other in per_rank[1:]:
        assert {k: v[1] for k, v in other.items()} == {k: v[1] for k, v in per_rank[0].items()}
    for policy in ("uniform", "balanced"):
        short, tiny = per_rank[0][(policy, "short")][1], per_rank[0][(policy, "tiny")][1]
        assert sum(short) == 5 and min(short) >= 1  # 5 tokens, block 128: every rank still gets one
        assert sum(tiny) == 3 and (min(tiny) == 0) == (world_size > 3)

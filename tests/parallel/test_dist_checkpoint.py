"""DCP checkpoint of an FSDP-sharded model saved on 4 processes and resumed on 2 (resharding)."""

import ckpt_workers
from dist_harness import run_world


def test_save_on_four_resume_on_two(tmp_path):
    root = str(tmp_path / "ckpt")
    after_save = run_world(ckpt_workers.save_worker, 4, root)
    resumed = run_world(ckpt_workers.resume_worker, 2, root)
    assert all(r["extra"] == 2 for r in resumed)
    # the resumed 2-process run continues the 4-process run's loss curve
    for a, b in zip(after_save[0], resumed[0]["losses"]):
        assert abs(a - b) < 1e-4, (after_save[0], resumed[0]["losses"])

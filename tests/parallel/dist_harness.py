"""Run a function on N local gloo processes with short timeouts, so a hang fails fast."""

from __future__ import annotations

import datetime
import multiprocessing as mp
import os
import traceback

from amylum.runtime.distributed.launch import free_local_port as free_port


def _entry(fn, rank, world_size, port, result_queue, args):
    import torch
    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world_size))
    torch.set_num_threads(1)
    try:
        dist.init_process_group("gloo", rank=rank, world_size=world_size, timeout=datetime.timedelta(seconds=60))
        result = fn(rank, world_size, *args)
        result_queue.put((rank, "ok", result))
    except BaseException:  # report every failure to the parent, which fails the test with it
        result_queue.put((rank, "error", traceback.format_exc()))
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def run_world(fn, world_size: int, *args, timeout: float = 240.0) -> list:
    """``fn(rank, world_size, *args)`` on ``world_size`` processes; returns per-rank results."""
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    port = free_port()
    procs = [ctx.Process(target=_entry, args=(fn, r, world_size, port, queue, args)) for r in range(world_size)]
    for p in procs:
        p.start()
    results, errors = {}, []
    try:
        for _ in range(world_size):
            # After a first failure, give the other ranks a few seconds to report theirs: the
            # root cause is often on another rank than the first "connection closed" report.
            rank, status, payload = queue.get(timeout=timeout if not errors else 10)
            if status == "ok":
                results[rank] = payload
            else:
                errors.append(f"rank {rank}:\n{payload}")
    except Exception as exc:  # queue timeout after a failure: report what we have
        if not errors:
            raise AssertionError(f"no result from all ranks within {timeout} s: {exc!r}") from None
    finally:
        for p in procs:
            p.join(timeout=5)
            if p.is_alive():
                p.kill()
    if errors:
        raise AssertionError("\n".join(errors))
    return [results[r] for r in range(world_size)]

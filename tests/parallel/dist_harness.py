"""Run a function on N local gloo processes with short timeouts, so a hang fails fast.

The ranks are forked from a forkserver that imported torch, transformers and amylum once per test
session: a spawned rank re-imports them, about 10 s of CPU per process (measured: a trivial 4-rank
world took 26 s to start with spawn on the 2-core machine, most of a gloo test's time). The
forkserver is a fresh process that only imported modules (no test has run in it, no thread, no
process group), so each rank still starts from a clean state; the rank function and its arguments
are still pickled, as with spawn, and each rank gets the caller's environment at start. A rank's
stdout and stderr go to a file of its own (the forkserver's are those of the test that started it),
shown in the message of a failing run.
"""

from __future__ import annotations

import datetime
import multiprocessing as mp
import os
import shutil
import tempfile
import traceback
from pathlib import Path

from amylum.runtime.distributed.launch import free_local_port as free_port


# What every rank imports anyway, imported once in the forkserver (a module missing here is
# imported by the rank itself, as under spawn); the resilience tests' single-process elastic
# workers (tests/resilience/resilience_scenario.py) come from the same forkserver.
PRELOAD = ["torch", "torch.distributed", "torch.distributed.fsdp", "torch.distributed.tensor", "transformers",
           "amylum.models", "amylum.parallel", "amylum.planner", "amylum.runtime", "amylum.runtime.distributed",
           "amylum.resilience.worker"]


def forkserver():
    """The multiprocessing context of every forked test process (see the module's docstring)."""
    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload(PRELOAD)  # used when the forkserver starts: at the session's first process
    return ctx


def _entry(fn, rank, world_size, port, result_queue, args, environ, log):
    import torch
    import torch.distributed as dist

    out = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    os.dup2(out, 1)  # the forkserver's stdout and stderr are those of the test that started it
    os.dup2(out, 2)
    os.environ.clear()  # the caller's environment now, not the forkserver's at its start
    os.environ.update(environ)
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
    """``fn(rank, world_size, *args)`` on ``world_size`` processes; returns per-rank results.
    A failure's message ends with what the ranks wrote to stdout and stderr."""
    ctx = forkserver()
    queue = ctx.Queue()
    port = free_port()
    environ = dict(os.environ)
    logs = Path(tempfile.mkdtemp(prefix="run_world-"))
    procs = [ctx.Process(target=_entry, args=(fn, r, world_size, port, queue, args, environ, str(logs / f"rank-{r}")))
             for r in range(world_size)]
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
            errors.append(f"no result from all ranks within {timeout} s: {exc!r}")
    finally:
        for p in procs:
            p.join(timeout=5)
            if p.is_alive():
                p.kill()
        output = []
        for r in range(world_size):
            log = logs / f"rank-{r}"
            if log.is_file() and log.stat().st_size:
                output.append(f"rank {r} output:\n{log.read_text(errors='replace')[-3000:]}")
        shutil.rmtree(logs, ignore_errors=True)
    if errors:
        raise AssertionError("\n".join(errors + output))
    return [results[r] for r in range(world_size)]

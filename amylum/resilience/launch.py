"""The command torchrun runs on each node: hand off to a warm spare, or start the worker cold.

``torchrun ... -m amylum.resilience.launch CONFIG [--section.key=value ...]`` behaves exactly like
``-m amylum.resilience`` (same arguments, same exit status, stops on SIGTERM), but a restart
after a failure skips Python's start-up and imports when a spare (``spare.py``) is waiting. This
module imports nothing heavy: it runs in tens of milliseconds.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time


def spare_path(env=os.environ) -> str:
    run = env.get("TORCHELASTIC_RUN_ID", "local")
    node = env.get("AMYLUM_NODE_ID") or socket.gethostname()
    return os.path.join(tempfile.gettempdir(), f"amylum-spare-{run}-{node}.sock")


AGENT_PID = "AMYLUM_AGENT_PID"  # set by the launcher: the worker starts the next spare (start_spare)


def start_spare(path: str, agent_pid: int) -> None:
    """A new spare for the next restart, detached (its own session) so stopping this worker leaves it.

    The worker calls this after its first completed step, not at start: a spare importing torch
    would otherwise compete for the CPU with the restore and the redone step, the recovery's
    critical path."""
    subprocess.Popen([sys.executable, "-m", "amylum.resilience.spare", path, str(agent_pid)],
                     stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                     start_new_session=True, close_fds=True)


def main(argv: list[str]) -> int:
    t0 = time.time()
    path = spare_path()
    os.environ[AGENT_PID] = str(os.getppid())  # torchrun's agent: a spare lives as long as it does
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        conn.connect(path)
    except OSError:
        conn.close()
        os.execv(sys.executable, [sys.executable, "-m", "amylum.resilience", *argv])  # cold start
    request = {"argv": argv, "env": dict(os.environ), "cwd": os.getcwd(), "t0": t0}
    socket.send_fds(conn, [json.dumps(request).encode()], [0, 1, 2])
    reader = conn.makefile("rb")
    child = json.loads(reader.readline())["pid"]

    def stop(signum, _frame):  # torchrun stopping its worker: pass the signal on to the real one
        try:
            os.killpg(child, signum)
        except ProcessLookupError:
            pass

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, stop)
    line = reader.readline()
    if not line:  # the spare vanished: its worker is gone too
        return 1
    return int(json.loads(line)["exit"])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

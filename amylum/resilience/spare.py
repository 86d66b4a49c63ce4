"""A warm spare worker: a process that has already imported torch, transformers and amylum and
waits, per node, for torchrun's next (re)start of the worker.

A restarted worker's largest cost is not restoring state (host memory, milliseconds) but starting
Python and importing the stack (measured here: ~5 s on an idle core, 10–20 s on a loaded 2-core
machine). ``launch.py``, the entrypoint torchrun runs, hands its environment and standard streams
to the spare over a Unix socket; the spare forks a child that runs the worker with them (fork
after import, before any thread exists, so the child starts with every module loaded), reports
the child's pid, and later its exit status, back to the launcher. Each hand-off starts the next
spare in the background, so every restart finds one.

Lifetime: a spare serves one hand-off. It exits when its node's torchrun agent is gone, when the
launcher it serves disappears (killing the worker it forked), or after ``IDLE_LIMIT_S``.
"""

from __future__ import annotations

import fcntl
import json
import os
import select
import signal
import socket
import sys
import time

IDLE_LIMIT_S = 3600.0
_MAX_REQUEST = 1 << 20


def serve(path: str, agent_pid: int) -> int:
    # One spare per socket: the lock is held for this process's life and released by the kernel
    # when it dies, so a socket file left by a killed spare is recognised as stale and replaced.
    lock = open(path + ".lock", "w")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:  # another spare already waits there
        lock.close()
        return 0
    import amylum.resilience.worker  # noqa: F401  the point of a spare: pay the imports before the failure

    if os.path.exists(path):
        os.unlink(path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(path)
    try:
        sock.listen(1)
        started = time.monotonic()
        while True:
            ready, _, _ = select.select([sock], [], [], 0.5)
            if ready:
                conn, _ = sock.accept()
                break
            if not _alive(agent_pid) or time.monotonic() - started > IDLE_LIMIT_S:
                os.unlink(path + ".lock")  # still held: no other spare can be using this file
                return 0
    finally:
        os.unlink(path)  # one hand-off per spare: the next spare binds the same path
        sock.close()
    msg, fds, _, _ = socket.recv_fds(conn, _MAX_REQUEST, 3)
    request = json.loads(msg.decode())
    child = os.fork()
    if child == 0:
        conn.close()
        lock.close()
        _become_worker(request, fds)  # never returns
    for fd in fds:
        os.close(fd)
    lock.close()  # the next spare may bind while this one supervises
    conn.sendall(json.dumps({"pid": child}).encode() + b"\n")
    return _supervise(conn, child)


def _become_worker(request: dict, fds: list[int]) -> None:
    code = 1
    try:
        for target, fd in zip((0, 1, 2), fds):
            os.dup2(fd, target)
        os.chdir(request["cwd"])
        os.environ.clear()
        os.environ.update(request["env"])
        os.setpgid(0, 0)  # its own group: the launcher signals the worker, not the spare
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        from amylum.resilience.worker import main

        code = main(request["argv"], process_start=request["t0"])
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 1
    except BaseException:
        import traceback

        traceback.print_exc()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def _supervise(conn: socket.socket, child: int) -> int:
    """Relay the child's exit status to the launcher; kill the child if the launcher goes away."""
    while True:
        pid, status = os.waitpid(child, os.WNOHANG)
        if pid:
            code = os.waitstatus_to_exitcode(status)
            code = 128 - code if code < 0 else code  # killed by a signal: the shell's convention
            try:
                conn.sendall(json.dumps({"exit": code}).encode() + b"\n")
            except OSError:
                pass
            return 0
        ready, _, _ = select.select([conn], [], [], 0.2)
        if ready and not conn.recv(1, socket.MSG_PEEK):  # EOF: the launcher died
            os.kill(child, signal.SIGKILL)
            os.waitpid(child, 0)
            return 0


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return True


if __name__ == "__main__":
    sys.exit(serve(sys.argv[1], int(sys.argv[2])))

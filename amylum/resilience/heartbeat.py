"""A heartbeat through the rendezvous store, so a hung node is found as surely as a dead one.

A killed node closes its sockets and its peers' next collective fails at once; a hung node
(stopped, swapped out, stuck in a driver) keeps its sockets open and a collective would wait for
the full collective timeout. So every worker runs a thread that bumps its own counter in the
rendezvous TCPStore every ``interval`` seconds and watches its peers' counters. Liveness is
judged on the watcher's own clock (when did the counter last change), so node clocks need not
agree. A peer silent for ``timeout`` seconds is declared lost: ``on_lost`` runs (the worker
exits, and torchrun's agents re-form the group without that node).
"""

from __future__ import annotations

import datetime
import threading
import time
from typing import Callable

import torch.distributed as dist


class Heartbeat:
    def __init__(self, host: str, port: int, prefix: str, node: str, peers: list[str], *,
                 interval: float, timeout: float, on_lost: Callable[[str, float], None]) -> None:
        # The store's own timeout bounds every get/set, so a vanished store cannot hang the thread.
        self._store = dist.TCPStore(host, port, is_master=False, timeout=datetime.timedelta(seconds=timeout),
                                    wait_for_workers=False)
        self._prefix, self._node = prefix, node
        self._peers = [p for p in peers if p != node]
        self._interval, self._timeout = interval, timeout
        self._on_lost = on_lost
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="amylum-heartbeat", daemon=True)
        # Announce now: peers start watching only after a barrier that follows every announcement,
        # so no watcher waits on a key that does not exist yet.
        self._beat(0)

    def start(self) -> "Heartbeat":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=self._interval * 4)

    def _beat(self, n: int) -> None:
        self._store.set(f"{self._prefix}/{self._node}", str(n))

    def _run(self) -> None:
        seen: dict[str, tuple[bytes | None, float]] = {p: (None, time.monotonic()) for p in self._peers}
        n = 0
        while not self._stop.wait(self._interval):
            n += 1
            now = time.monotonic()
            try:
                self._beat(n)
                keys = [f"{self._prefix}/{p}" for p in self._peers]
                values = self._store.multi_get(keys) if keys else []
            except Exception:  # the store itself is gone: nothing can coordinate any more
                self._on_lost("<rendezvous store>", now - min((t for _, t in seen.values()), default=now))
                return
            for peer, value in zip(self._peers, values):
                last, since = seen[peer]
                if value != last:
                    seen[peer] = (value, now)
                elif now - since > self._timeout:
                    self._on_lost(peer, now - since)
                    return

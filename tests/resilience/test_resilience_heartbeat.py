"""The heartbeat declares a silent peer lost within its timeout (a hung node, not only a dead one)."""

from __future__ import annotations

import datetime
import threading
import time

import torch.distributed as dist

from amylum.resilience.heartbeat import Heartbeat

from resilience_scenario import free_port


def test_silent_peer_is_declared_lost_and_live_peers_are_not():
    port = free_port()
    server = dist.TCPStore("127.0.0.1", port, is_master=True, wait_for_workers=False,
                           timeout=datetime.timedelta(seconds=10))
    lost: dict[str, tuple[str, float]] = {}
    done = threading.Event()

    def on_lost(me):
        def cb(peer, silent):
            lost[me] = (peer, silent)
            done.set()
        return cb

    nodes = ["a", "b", "c"]
    beats = {n: Heartbeat("127.0.0.1", port, "hb/1", n, nodes, interval=0.1, timeout=1.0, on_lost=on_lost(n))
             for n in nodes}
    for hb in beats.values():
        hb.start()
    time.sleep(1.5)
    assert lost == {}  # everyone beats: nobody is lost
    t = time.monotonic()
    beats["c"].stop()  # c hangs: its counter stops moving, its socket stays open
    assert done.wait(5.0)
    time.sleep(0.3)
    assert time.monotonic() - t < 3.0
    assert {me: peer for me, (peer, _) in lost.items()} == {"a": "c", "b": "c"}
    assert all(silent > 1.0 for _, silent in lost.values())
    for n in ("a", "b"):
        beats[n].stop()
    del server

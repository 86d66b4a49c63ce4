"""The elastic worker: what torchrun starts on every node, and starts again after every change.

Design: restart and reload. A membership change (a node lost, hung or joining) makes torchrun's
agents stop their workers and re-form the rendezvous; every surviving node's new worker reloads
its own host-memory snapshot, the group re-plans from the templates, layers a node lacks are sent
by a holder, and the step a failure interrupted is redone. The worker leaves a failed group fast:
a failed collective or a silent peer (heartbeat) ends the process with EXIT_PEER_LOST at once,
without Python's teardown, so the agent re-forms the group without waiting.

Run under torchrun (see docs/resilience.md) or alone (no torchrun variables: one process, the
failure-free reference): ``python -m amylum.resilience CONFIG [--section.key=value ...]``.
"""

from __future__ import annotations

import datetime
import os
import sys
import time
import traceback

import torch
import torch.distributed as dist

from amylum.resilience import comm
from amylum.resilience.config import ElasticConfig, load_elastic_config
from amylum.resilience.events import EventLog
from amylum.resilience.heartbeat import Heartbeat
from amylum.resilience.launch import AGENT_PID, spare_path, start_spare
from amylum.resilience.membership import Membership
from amylum.resilience.parts import build_parts, prepare_data
from amylum.resilience.plan import (
    ReplicaLostError,
    TooFewNodesError,
    instance_from_json,
    instance_to_json,
    plan_for,
    runtime_templates,
    slots,
)
from amylum.resilience.recovery import holder_sets
from amylum.resilience.restore import NoStateError, new_lineage, report_of, restore
from amylum.resilience.snapshot import NodeSnapshots
from amylum.resilience.step import train_step
from amylum.resilience.units import unit_costs, unit_digest, unit_state
from amylum.runtime.checkpoint import CheckpointManager

EXIT_TOO_FEW_NODES = 3  # fewer than (f+1)·n0 nodes: no plan keeps f+1 replicas
EXIT_NO_STATE = 4  # more than f failures at once and no disk checkpoint to fall back to
EXIT_PEER_LOST = 75  # a peer died or hung: torchrun re-forms the group and restarts the workers


class PeerLost(RuntimeError):
    pass


def _is_comm_error(e: BaseException) -> bool:
    return isinstance(e, (dist.DistError, PeerLost)) or "gloo" in str(e).lower() or "connection" in str(e).lower()


class ElasticWorker:
    def __init__(self, ecfg: ElasticConfig, me: Membership, process_start: float) -> None:
        self.cfg, self.res, self.me = ecfg.run, ecfg.resilience, me
        self.process_start = process_start
        self.job = self.res.job or me.run_id
        self.log = EventLog(self.cfg.job.run_dir, me.node)
        self.snaps = NodeSnapshots(self.res.snapshot_root, self.job, me.node)
        self.heartbeat: Heartbeat | None = None

    # ---- group ------------------------------------------------------------------------------

    def _join(self) -> None:
        timeout = datetime.timedelta(seconds=self.res.collective_timeout_s)
        if self.me.elastic:
            if os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True":
                # torchrun's shared store outlives rendezvous rounds without a per-round prefix for
                # the workers' keys: a restarted group can read the previous group's gloo addresses
                # and fail to connect (seen here with torch 2.13). A store per round avoids that.
                raise RuntimeError("start the torchrun agents with TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1 so every "
                                   "rendezvous round gets a fresh worker store (see docs/resilience.md)")
            dist.init_process_group("gloo", timeout=timeout)  # env:// from torchrun: rank 0 hosts the store
        else:
            dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1, timeout=timeout)

    def _lost(self, peer: str, silent_s: float) -> None:
        """Heartbeat thread: a peer is silent. Leave now; the main thread may be stuck in a collective."""
        self.log.write("peer_lost", peer=peer, silent_s=round(silent_s, 3), how="heartbeat", gen=self.gen)
        print(f"[amylum.resilience] node {peer} silent for {silent_s:.1f} s: leaving so torchrun re-forms "
              "the group", file=sys.stderr, flush=True)
        os._exit(EXIT_PEER_LOST)

    # ---- run --------------------------------------------------------------------------------

    def run(self) -> int:
        torch.set_num_threads(max(1, self.cfg.job.threads) if self.cfg.job.threads else torch.get_num_threads())
        torch.manual_seed(self.cfg.job.seed)
        torch.use_deterministic_algorithms(self.cfg.training.deterministic, warn_only=True)
        self.gen = None
        self._join()
        t_group = time.time()
        rank, world = dist.get_rank(), dist.get_world_size()
        key = f"amylum/{self.job}"
        # rank 0 proposes a new lineage (used if the run restarts from disk or from scratch)
        proposal = {"lineage": new_lineage()} if rank == 0 else {}
        gathered = comm.all_gather_json(dict(report_of(self.me.node, rank, self.snaps), **proposal))
        head = gathered[0]
        latest = max((g["latest"] for g in gathered if g["latest"]), key=lambda m: m["step"], default=None)
        self.gen = 1 + max((g["latest"]["gen"] for g in gathered if g["latest"]), default=0)
        nodes = [g["node"] for g in gathered]
        if len(set(nodes)) != len(nodes):
            raise RuntimeError(f"two workers report the same node id ({nodes}): set AMYLUM_NODE_ID per node")
        if self.me.elastic:
            self.heartbeat = Heartbeat(self.me.master_addr, self.me.master_port, f"{key}/hb/{self.gen}", self.me.node,
                                       nodes, interval=self.res.heartbeat_interval_s,
                                       timeout=self.res.heartbeat_timeout_s, on_lost=self._lost)
        dist.barrier()  # every heartbeat key exists before anyone watches
        if self.heartbeat is not None:
            self.heartbeat.start()
        if rank == 0:  # the demo data is generated once, by rank 0; the others then find it in place
            prepare_data(self.cfg)
        dist.barrier()
        parts = build_parts(self.cfg, self.res.global_microbatches)
        t_built = time.time()

        ts = runtime_templates(unit_costs(parts.model, parts.units), self.res.max_nodes, self.res.f,
                               self.res.global_microbatches)
        previous = instance_from_json(latest["plan"]) if latest else None
        try:
            instance, lost, joined = plan_for(ts, nodes, self.res.f, self.res.global_microbatches, previous)
        except ReplicaLostError:
            # the previous plan's survivors hold no replica of some layer: restore() falls back to disk
            instance, lost, joined = plan_for(ts, nodes, self.res.f, self.res.global_microbatches, None)
            lost = tuple(sorted(set(previous.node_ids) - set(nodes)))
        ckpt = CheckpointManager(f"{self.cfg.job.run_dir}/checkpoints", keep_last=self.cfg.checkpoint.keep_last)
        restored = restore(parts, self.cfg, gathered, rank, self.snaps, ckpt, head["lineage"],
                           list(previous.node_ids) if previous else None)
        slot = slots(instance)[self.me.node]
        self.plan_json = instance_to_json(instance)
        digests = self._digests(parts)
        self.log.write("start", gen=self.gen, rank=rank, world=world, nodes=nodes, restart=self.me.restart_count,
                       source=restored.source, step=restored.step, lineage=restored.lineage,
                       message=restored.message, lost=list(lost), joined=list(joined), transfers=restored.transfers,
                       mix={str(k): v for k, v in instance.mix().items()}, slot=[slot.first_microbatch, slot.microbatches],
                       process_start=self.process_start, t_group=t_group, t_built=t_built,
                       restore_s=round(restored.seconds, 3), digests=digests)
        if rank == 0 and (restored.source != "memory" or lost):
            print(f"[amylum.resilience] gen {self.gen}: {restored.message}; nodes {nodes}, lost {list(lost)}, "
                  f"joined {list(joined)}", file=sys.stderr, flush=True)

        # one all-reduce group per set of ranks holding the same layers (here: all ranks, all layers)
        rank_of = {g["node"]: g["rank"] for g in gathered}
        need = {rank_of[n]: {u.name for u in parts.units} for n in nodes}
        by_name = {u.name: u for u in parts.units}
        groups = []
        for ranks, names in sorted(holder_sets(need).items(), key=lambda kv: sorted(kv[0])):
            group = None if len(ranks) == world else dist.new_group(sorted(ranks))
            params = [parts.model.get_parameter(p) for n in names for p in by_name[n].params]
            if rank in ranks:
                groups.append((group, params))
        sync = comm.GradSync(groups)
        return self._train(parts, restored, slot, sync, ckpt)

    def _digests(self, parts) -> dict:
        return {u.name: unit_digest(unit_state(parts.model, parts.optimizer, u)) for u in parts.units}

    def _train(self, parts, restored, slot, sync, ckpt) -> int:
        total = self.cfg.training.steps
        end = min(total, self.res.stop_after) if self.res.stop_after else total
        every = self.cfg.checkpoint.every
        step = restored.step
        while step < end:
            mbs = parts.order.microbatches(step, slot.first_microbatch, slot.microbatches)
            # logged before the step's first collective: if the step completes anywhere, this node's
            # samples are in it, even if the node dies before it can log the completed step
            self.log.write("consume", gen=self.gen, lineage=restored.lineage, step=step + 1,
                           samples=[s.position for mb in mbs for s in mb])
            info = train_step(parts, mbs, sync, self.snaps.wait, self.cfg.training.grad_clip)
            step += 1
            if step == restored.step + 1 and AGENT_PID in os.environ:  # run by launch.py: prepare the next restart
                start_spare(spare_path(), int(os.environ[AGENT_PID]))
            states = {u.name: unit_state(parts.model, parts.optimizer, u) for u in parts.units}
            self.snaps.write_async(step, {k: v for s in states.values() for k, v in s.items()},
                                   {"lineage": restored.lineage, "units": sorted(states), "gen": self.gen,
                                    "plan": self.plan_json})
            self.log.write("step", gen=self.gen, lineage=restored.lineage, step=step, loss=info["loss"], targets=info["targets"],
                           grad_norm=info["grad_norm"], digests={n: unit_digest(s) for n, s in states.items()})
            if (every and step % every == 0) or step == total:
                ckpt.save(step, parts.model, parts.optimizer, {"lineage": restored.lineage})
        self.snaps.wait()
        dist.barrier()  # before the heartbeat stops: a peer still in its last step must not see silence
        if self.heartbeat is not None:
            self.heartbeat.stop()
        self.log.write("done", gen=self.gen, step=step)
        dist.destroy_process_group()
        return 0


def main(argv: list[str] | None = None, process_start: float | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0].startswith("-"):
        print("usage: python -m amylum.resilience CONFIG.toml [--section.key=value ...]", file=sys.stderr)
        return 2
    ecfg = load_elastic_config(argv[0], argv[1:])
    me = Membership.from_environ()
    worker = ElasticWorker(ecfg, me, process_start or time.time())
    try:
        return worker.run()
    except TooFewNodesError as e:
        worker.log.write("too_few_nodes", message=str(e))
        print(f"[amylum.resilience] cannot continue: {e}. Add nodes (or lower resilience.f); host-memory "
              "snapshots are kept, so a group with enough nodes resumes from them.", file=sys.stderr, flush=True)
        os._exit(EXIT_TOO_FEW_NODES)
    except NoStateError as e:
        worker.log.write("no_state", message=str(e))
        print(f"[amylum.resilience] {e}", file=sys.stderr, flush=True)
        os._exit(EXIT_NO_STATE)
    except BaseException as e:
        if _is_comm_error(e):
            worker.log.write("peer_lost", how="collective", error=str(e)[:300], gen=getattr(worker, "gen", None))
            print(f"[amylum.resilience] collective failed ({str(e)[:200]}): leaving so torchrun re-forms the group",
                  file=sys.stderr, flush=True)
            os._exit(EXIT_PEER_LOST)
        traceback.print_exc()
        sys.stderr.flush()
        os._exit(1)


if __name__ == "__main__":
    sys.exit(main())

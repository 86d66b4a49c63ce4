"""Resilient training at run time (issue 10, after Oobleck): elastic membership from torchrun,
re-planning from pipeline templates, host-memory snapshots, per-layer gradient sync and state
transfer between replicas, heartbeat, disk-checkpoint fallback beyond f failures.

Module map (docs/resilience.md): ``membership`` (who am I, from torchrun's env), ``plan`` (re-plan
from the templates), ``recovery`` (resume point, transfer routes, holder sets: pure),
``snapshot`` (per-node host-memory state), ``comm`` (gradient sync, state transfer), ``restore``
(memory / disk / fresh), ``heartbeat``, ``sampling`` (global batch per step), ``step``, ``worker``,
``launch`` + ``spare`` (warm-spare restarts), ``local`` (simulated nodes on one machine),
``events`` (per-node event log), ``commands`` (``amylum train-elastic``).
"""

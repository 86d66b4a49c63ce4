"""Re-planning from the templates for the nodes of one rendezvous round (pure, no torch).

The planner (``amylum.planner``) gives templates for [n0, N − f·n0] nodes and the fastest mix with
≥ f+1 pipelines; this module turns its ``Instance`` into what a worker needs: which pipeline each
node is in and which slice of the global batch (in microbatches) that pipeline runs. The global
microbatch count is the same in every plan, so the global batch and the data position survive
re-planning unchanged.

The runtime runs pipelines of one node each (one process per node; every node a full replica).
Templates of more nodes are planned but not run: the plan is restricted to the one-node template,
and a model that does not fit one node fails here with a clear message (see docs/resilience.md).
"""

from __future__ import annotations

from dataclasses import dataclass

from amylum.planner.instantiate import (
    Instance,
    PipelinePlan,
    ReplicaLostError,
    instantiate,
    replan,
)
from amylum.planner.templates import LayerCost, NodeSpec, TemplateSet, pipeline_templates

# One process per node, and nodes are not memory-bound on CPU: the node description only orders
# templates by the relative layer costs.
CPU_NODE = NodeSpec(gpus_per_node=1, gpu_memory_bytes=1e15, intra_bw=1e10, inter_bw=1e9)


class TooFewNodesError(RuntimeError):
    """Fewer nodes than (f+1)·n0: no plan keeps f+1 replicas."""


def runtime_templates(layers: list[LayerCost], max_nodes: int, f: int, global_microbatches: int,
                      node: NodeSpec = CPU_NODE) -> TemplateSet:
    """The templates the runtime can run: the one-node template of ``pipeline_templates``."""
    ts = pipeline_templates(layers, node, max(max_nodes, f + 1), f, max(1, global_microbatches // (f + 1)))
    if 1 not in ts.templates:
        raise ValueError(f"the model needs pipelines of >= {ts.n0} nodes; the elastic runtime runs one-node "
                         "pipelines only (multi-node pipelines are planned but not executed yet)")
    return TemplateSet(ts.layers, ts.node, ts.n0, {1: ts.templates[1]}, {})


@dataclass(frozen=True)
class Slot:
    """One node's share of a plan."""

    pipeline: int
    first_microbatch: int  # of the global batch
    microbatches: int
    nodes: tuple  # the pipeline's nodes, first stage first


def slots(instance: Instance) -> dict[str, Slot]:
    """node id → its pipeline and microbatch range; pipelines take contiguous slices in order."""
    out, start = {}, 0
    for j, p in enumerate(instance.pipelines):
        for n in p.node_ids:
            out[n] = Slot(j, start, p.microbatches, tuple(p.node_ids))
        start += p.microbatches
    if start != instance.global_microbatches:
        raise AssertionError(f"plan splits {start} microbatches, the global batch has {instance.global_microbatches}")
    return out


def plan_for(ts: TemplateSet, nodes: list[str], f: int, global_microbatches: int,
             previous: Instance | None = None):
    """(instance, lost, joined) for ``nodes``; re-planned from ``previous`` when there is one.

    Raises TooFewNodesError when fewer than (f+1)·n0 nodes remain, ReplicaLostError (from the
    planner) when the previous plan's survivors hold no replica of some layer.
    """
    nodes = sorted(nodes)
    if len(nodes) < (f + 1) * ts.n0:
        raise TooFewNodesError(f"{len(nodes)} node(s) left ({', '.join(nodes)}); f={f} needs at least "
                               f"(f+1)·n0 = {(f + 1) * ts.n0} to keep f+1 replicas")
    if previous is None:
        return instantiate(ts, nodes, f, global_microbatches), (), tuple(nodes)
    rec = replan(ts, previous, nodes, f, global_microbatches)
    return rec.instance, rec.lost, rec.joined


def instance_to_json(inst: Instance) -> dict:
    return {"f": inst.f, "global_microbatches": inst.global_microbatches,
            "pipelines": [{"template_nodes": p.template_nodes, "node_ids": list(p.node_ids),
                           "microbatches": p.microbatches, "time_s": p.time_s} for p in inst.pipelines]}


def instance_from_json(d: dict) -> Instance:
    return Instance(tuple(PipelinePlan(p["template_nodes"], tuple(p["node_ids"]), p["microbatches"], p["time_s"])
                          for p in d["pipelines"]), d["f"], d["global_microbatches"])


__all__ = ["CPU_NODE", "ReplicaLostError", "Slot", "TooFewNodesError", "instance_from_json", "instance_to_json",
           "plan_for", "runtime_templates", "slots"]

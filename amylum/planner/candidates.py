"""Candidate plans as data: chain options (a chain cut into stages of one TP width) and plans.

Shared by the search and the baselines, so both build and simulate plans the same way. The
layer-balanced (even) variants live here too: the search tries them next to its cost-optimal
splits, because the partition is optimal for the analytic objective while the simulator, which
judges, also sees transfers, DAG joins and DP sync that the objective only approximates.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from .cost import StageCost
from .partition import even_partition
from .plan import Plan, StagePlan, assign_ranks
from .spec import ModelSpec


@dataclass
class ChainOption:
    chain: str
    tp: int
    p: int
    bounds: tuple[int, ...]
    costs: list[StageCost]
    cp: int = 1  # context-parallel degree of every stage of the chain (its LLM layers)

    @property
    def gpus(self) -> int:
        return self.p * self.tp * self.cp

    @property
    def w(self) -> list[float]:
        return [c.total for c in self.costs]

    @property
    def bottleneck(self) -> float:
        return max(self.w)



def replica_dims(world: int, replica_gpus: int, global_batch: int, mb: int) -> tuple[int, int] | None:
    """(DP degree, microbatches per replica) the planners give a replica of ``replica_gpus``:
    as many replicas as fit, but no more than there are microbatches of ``mb`` samples; the last
    microbatch round pads up to dp × m × mb ≥ global batch. None: one replica does not fit."""
    dp = min(world // replica_gpus, max(1, global_batch // mb))
    if dp < 1:
        return None
    return dp, -(-global_batch // (dp * mb))


def build_plan(model: ModelSpec, options: list[ChainOption], placement: str, dp: int, mb: int, m: int,
               global_batch: int, ck: bool, schedule: str) -> Plan:
    """Stages from chain options; branches first, the LLM chain (or colocated chain) last."""
    stages: list[StagePlan] = []
    ends: list[int] = []
    chains = {o.chain: o for o in options}
    layer_lists = {}
    for o in options:
        if o.chain == "colocated":
            layer_lists[o.chain] = [l for b in model.branches for l in b.layers] + list(model.llm)
        else:
            layer_lists[o.chain] = list(model.chain(o.chain))
    order = [b.name for b in model.branches if b.name in chains] + [c for c in ("llm", "colocated") if c in chains]
    for name in order:
        o = chains[name]
        ls = layer_lists[name]
        for s, (a, b) in enumerate(zip(o.bounds, o.bounds[1:])):
            ins = (len(stages) - 1,) if s > 0 else ()
            if name == "llm" and a <= model.merge_index < b:
                ins = ins + tuple(ends)  # the stage that scatters modality features receives every branch
            stages.append(StagePlan(id=len(stages), chain=name, layers=tuple(l.name for l in ls[a:b]), tp=o.tp,
                                    inputs=ins, cp=o.cp))
        if name not in ("llm", "colocated"):
            ends.append(len(stages) - 1)
    ranks = assign_ranks([s.width for s in stages], dp)
    stages = [replace(s, ranks=r) for s, r in zip(stages, ranks)]
    R = sum(s.width for s in stages)
    return Plan(model=model.name, placement=placement, dp=dp, microbatch_size=mb, num_microbatches=m,
                global_batch=global_batch, stages=tuple(stages), schedule=schedule, checkpointing=ck,
                world_size=R * dp)


def chain_layers(model: ModelSpec, chain: str):
    """Layers of a chain; "colocated" is every branch, in order, then the LLM."""
    if chain == "colocated":
        return [l for b in model.branches for l in b.layers] + list(model.llm)
    return list(model.chain(chain))


def even_option(model: ModelSpec, chain: str, tp: int, p: int) -> ChainOption | None:
    """``chain`` cut into ``p`` stages of equal layer count (None if it has fewer layers).

    For "colocated" the branches stay whole on the first stage and only the LLM's layers are
    split evenly (the torchtitan-style colocated rule).
    """
    if chain == "colocated":
        nb = sum(len(b.layers) for b in model.branches)
        n = len(model.llm)
        if p > n:
            return None
        e = even_partition(n, p)
        return ChainOption(chain, tp, p, (0,) + tuple(nb + x for x in e[1:]), [])
    n = len(chain_layers(model, chain))
    if p > n:
        return None
    return ChainOption(chain, tp, p, even_partition(n, p), [])


def template_options(model: ModelSpec, llm_p: int, enc_p: int, tp: int) -> list[ChainOption] | None:
    """Modality-parallel stages with fixed counts (LLM, each encoder), even splits, one TP."""
    opts = []
    for b in model.branches:
        o = even_option(model, b.name, tp, enc_p)
        if o is None:
            return None
        opts.append(o)
    o = even_option(model, "llm", tp, llm_p)
    return None if o is None else opts + [o]


def balanced_variant(model: ModelSpec, options: list[ChainOption]) -> list[ChainOption] | None:
    """The same chains, TP widths and stage counts, with layers split evenly by count."""
    out = []
    for o in options:
        # a colocated chain's even split keeps every branch on stage 0, which changes the
        # problem; balance the whole chain by count instead
        n = len(chain_layers(model, o.chain))
        if o.p > n:
            return None
        out.append(ChainOption(o.chain, o.tp, o.p, even_partition(n, o.p), [], cp=o.cp))
    return out

"""Context parallelism for the LLM of a ``MultimodalLM``: shard the sequence, not the model.

One step on CP rank ``r`` of ``cp`` ranks::

    apply_cp(model)                                             # once: LLM attention → amylum_cp
    assignment = plan_cp(mask_spec(batch, mode), cp=cp, policy="balanced", model=work_model)
    shard = shard_batch(batch, assignment, rank=r, exchange="sparse")  # host side, travels with the microbatch
    out = cp_forward(model, batch, shard, group=cp_group, num_items_in_batch=global_targets)
    out.loss.backward(); allreduce_gradients(model, cp_group)   # or fold the CP group into FSDP's

How it works:
- The batch's (B, S) rows are flattened into one sequence of B·S tokens (rows never attend to
  each other: ``flat_intervals``), so an assignment can balance across rows and samples.
- Images and clips are scattered into the full sequence by ``model.embed`` *before* sharding
  (every CP rank runs the encoders on the whole microbatch; the encoders' gradients are
  partial per rank and summed with the LLM's).
- Each rank keeps its tokens' ``inputs_embeds`` and their *global* ``position_ids`` (RoPE
  stays right), runs the HF decoder on them, and its attention exchanges K/V
  (``cp_exchange``): all-gather of the whole sequence, or (``exchange="sparse"``) only the key
  blocks its queries may see, planned on the host in ``shard_batch``.
- The loss covers the rank's target positions (the next-token label is read from the full
  batch, so a target whose next token lives on another rank is still right) and is divided
  by the global target count: the sum over ranks is the unsharded loss.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import SimpleNamespace

import numpy as np
import torch
import torch.distributed as dist

from amylum.attention.mask import mask_spec
from amylum.data.batch import BatchIndex, MultimodalBatch
from amylum.planner.cp_balance import CPAssignment, flat_intervals

from .cp_attention import CP_IMPLEMENTATION, CP_KWARG, CPAttention, register_cp_attention
from .cp_exchange import EXCHANGES, AllGatherKV, KVTraffic, SparseKV, SparseKVPlan, sparse_kv_plan


@dataclass(frozen=True)
class CPShard:
    """What CP rank ``rank`` holds of one microbatch (flat positions ``row·S + col``)."""

    rank: int
    counts: tuple[int, ...]  # tokens per rank
    index: torch.Tensor  # (n_local,) sorted flat positions this rank holds
    order: torch.Tensor  # (N,) position in the rank-major gathered sequence of each global token
    lo: torch.Tensor  # (n_local,) key interval of each local query, in flat positions
    hi: torch.Tensor
    position_ids: torch.Tensor  # (1, n_local) global positions (restart per sample), for RoPE
    target_index: BatchIndex  # local target positions and their labels
    num_targets: int  # over the whole microbatch (all ranks)
    block_size: int
    kv_plan: SparseKVPlan | None = None  # the mask-aware K/V exchange's sends/receives; None: all-gather
    overlap: bool = False  # attend to own keys while the K/V exchange is in flight (cp_overlap)

    @property
    def num_local(self) -> int:
        return int(self.index.shape[0])

    def to(self, device) -> "CPShard":
        move = lambda t: t.to(device)  # noqa: E731
        return CPShard(self.rank, self.counts, move(self.index), move(self.order), move(self.lo), move(self.hi),
                       move(self.position_ids), self.target_index.to(device), self.num_targets, self.block_size,
                       self.kv_plan.to(device) if self.kv_plan is not None else None, self.overlap)


def shard_batch(batch: MultimodalBatch, assignment: CPAssignment, rank: int, *, mode: str = "multimodal",
                exchange: str = "allgather", kv_block: int | None = None, overlap: bool = False) -> CPShard:
    """Rank ``rank``'s part of ``batch`` under ``assignment`` (computed on the host, no collectives).

    ``exchange``: ``"allgather"`` (every rank gets all K/V) or ``"sparse"`` (only the key
    blocks of ``kv_block`` positions, default the assignment's block size, that hold a key its
    queries may see; the sends and receives are planned here, for every layer of the step).
    ``overlap``: each layer attends to the rank's own keys while the exchange is in flight, then
    to the received ones, merged exactly by log-sum-exp (``cp_overlap``).
    """
    if exchange not in EXCHANGES:
        raise ValueError(f"unknown CP K/V exchange {exchange!r}; expected one of {EXCHANGES}")
    B, S = batch.sample_ids.shape
    if assignment.seq_len != B * S:
        raise ValueError(f"assignment covers {assignment.seq_len} tokens but the batch flattens to {B}×{S} = {B * S}; "
                         "plan it from mask_spec(batch) of this microbatch")
    if not 0 <= rank < assignment.cp:
        raise ValueError(f"rank {rank} outside the CP group of {assignment.cp}")
    lo, hi = flat_intervals(mask_spec(batch.to("cpu") if batch.input_ids.is_cuda else batch, mode))
    parts = [assignment.token_indices(r) for r in range(assignment.cp)]
    order = np.empty(B * S, dtype=np.int64)
    order[np.concatenate(parts)] = np.arange(B * S)
    idx = parts[rank]
    full = batch.index if batch.index is not None else BatchIndex.from_batch(batch.to("cpu") if batch.input_ids.is_cuda else batch)
    targets = full.target_positions.cpu().numpy()
    label_of = np.full(B * S, -100, dtype=np.int64)
    label_of[targets] = full.target_labels.cpu().numpy()
    is_target = np.zeros(B * S, dtype=bool)
    is_target[targets] = True
    local_targets = np.nonzero(is_target[idx])[0]
    t = lambda a: torch.as_tensor(np.ascontiguousarray(a), dtype=torch.long)  # noqa: E731
    target_index = BatchIndex(target_positions=t(local_targets), target_labels=t(label_of[idx[local_targets]]),
                              modality_positions={})
    return CPShard(
        rank=rank, counts=tuple(int(p.size) for p in parts), index=t(idx), order=t(order), lo=t(lo[idx]), hi=t(hi[idx]),
        position_ids=batch.position_ids.cpu().reshape(-1)[t(idx)][None], target_index=target_index,
        num_targets=int(targets.size), block_size=assignment.block_size,
        kv_plan=sparse_kv_plan(assignment, lo, hi, rank, kv_block) if exchange == "sparse" else None,
        overlap=overlap,
    )


def shard_tokens(x: torch.Tensor, shard: CPShard) -> torch.Tensor:
    """(B, S, ...) → (1, n_local, ...): this rank's tokens of the flattened batch."""
    flat = x.reshape(x.shape[0] * x.shape[1], *x.shape[2:])
    return flat.index_select(0, shard.index.to(x.device))[None]


def kv_exchange(shard: CPShard, group=None):
    """The K/V exchange of ``shard``: ``SparseKV`` when it carries a plan, else ``AllGatherKV``."""
    if shard.kv_plan is not None:
        return SparseKV(shard.kv_plan, group)
    lo, hi = shard.lo, shard.hi
    if shard.num_local == 0:  # the placeholder token of an empty shard (see cp_forward) sees key 0
        lo = hi = torch.zeros(1, dtype=torch.long, device=lo.device)
    return AllGatherKV(shard.counts, shard.order, lo, hi, group)


def cp_attention_inputs(shard: CPShard, group=None, *, backend: str = "reference", traffic: KVTraffic | None = None) -> dict:
    """Keyword arguments for the HF decoder under CP (``attention_mask=None`` + the CP state).

    ``traffic``: where the exchange records what it moved (one entry per layer call).
    """
    exchange = kv_exchange(shard, group)
    if traffic is not None:
        exchange.traffic = traffic
    attn = CPAttention(exchange, backend=backend, block_size=shard.block_size, num_ranks=len(shard.counts),
                       overlap=shard.overlap)
    return {"attention_mask": None, CP_KWARG: attn}


def apply_cp(model) -> None:
    """Switch the LLM of ``model`` (a ``MultimodalLM`` or an HF causal LM) to CP attention.

    Unsharded forwards still work afterwards: without a CP state the function delegates to
    amylum's other backends by the mask it receives.
    """
    llm = getattr(model, "llm", model)
    register_cp_attention()
    if hasattr(llm, "set_attn_implementation"):
        llm.set_attn_implementation(CP_IMPLEMENTATION)
    else:
        llm.config._attn_implementation = CP_IMPLEMENTATION
    got = llm.config._attn_implementation
    if got != CP_IMPLEMENTATION:
        raise RuntimeError(f"{type(llm).__name__} kept attention implementation {got!r} instead of {CP_IMPLEMENTATION!r}")


def cp_forward(model, batch: MultimodalBatch, shard: CPShard, *, group=None, backend: str = "reference",
               num_items_in_batch: int | torch.Tensor | None = None, embeds: torch.Tensor | None = None,
               traffic: KVTraffic | None = None):
    """Embed (full batch) → shard → decode with CP attention → this rank's share of the loss.

    ``num_items_in_batch`` defaults to the microbatch's global target count, so summing the
    ranks' losses (and gradients) gives the unsharded values. ``embeds``: the full
    ``inputs_embeds`` when a pipeline stage computed them elsewhere. ``traffic``: a
    ``KVTraffic`` that records the K/V exchange's tokens per layer (benchmarks).
    """
    embeds = model.embed(batch) if embeds is None else embeds
    device = embeds.device
    shard = shard if shard.index.device == device else shard.to(device)
    local, positions = shard_tokens(embeds, shard), shard.position_ids
    if shard.num_local == 0:
        # Fewer tokens than ranks: HF cannot run an empty sequence, yet this rank must join every
        # layer's exchange. It runs one placeholder token whose K/V the others drop (its count
        # is 0) and whose output has no target.
        local = embeds.new_zeros(1, 1, embeds.shape[-1])
        positions = torch.zeros(1, 1, dtype=torch.long, device=device)
    attn = cp_attention_inputs(shard, group, backend=backend, traffic=traffic)
    states = model.decode(local, SimpleNamespace(position_ids=positions), attn)
    count = shard.num_targets if num_items_in_batch is None else num_items_in_batch
    return model.loss_from_states(states, SimpleNamespace(index=shard.target_index), num_items_in_batch=count)


def allreduce_gradients(model: torch.nn.Module, group=None) -> None:
    """Sum parameter gradients over the CP group (each rank's loss covers only its tokens).

    TP-sharded (DTensor) gradients are reduced shard by shard: the CP group is one TP index's.

    With FSDP2, put the CP ranks into the data-parallel reduction instead (a mesh dimension
    that spans dp × cp), as torchtitan does; then this call is not needed.
    """
    from torch.distributed.tensor import DTensor

    params = [p for p in model.parameters() if p.requires_grad]
    for p in params:  # every rank must reduce the same list, even where its graph left a gradient out
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    # A TP-sharded parameter's CP peers hold the same shard: reduce the local shards in place.
    grads = [p.grad.to_local() if isinstance(p.grad, DTensor) else p.grad for p in params]
    if not grads:
        return
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat, group=group)
    offset = 0
    for g in grads:
        g.copy_(flat[offset : offset + g.numel()].view_as(g))
        offset += g.numel()

"""The training loop of one rank: the single-process ``Trainer`` with a distributed step.

What stays the Trainer's: AdamW and the LR schedule, the loop, logging windows, energy, and
checkpoints through ``CheckpointManager`` (DCP: each rank writes its shards, under the full
model's parameter names, so a run resumes on another plan or exports on one process). What
changes is one optimizer step:

1. each replica reads its share of the global batch (its own loader, indexed by the replica,
   not by the global rank: every rank of a replica needs the same samples) and cuts it into the
   plan's microbatches; a balanced loader (``data.balance``) yields the microbatches themselves,
   already split by work and ordered for the pipeline, and the step takes the plan's count of
   them in that order;
2. the loss is normalised by the global target-token count (summed over replicas), so every
   token weighs what it weighs on one process and FSDP's summed gradients are exact;
3. the executor runs the stage's action list; the loss lives on each replica's last stage. On a
   CP stage each microbatch travels with this rank's shard of it (``cp_shards.py``), and each CP
   rank's loss covers its tokens only (still over the global target count);
4. the gradient is clipped by the norm of the whole model's gradient, over all ranks;
5. loss, tokens, samples and items are summed over replicas (the loss over CP ranks too, each
   holding a share; the counts once per replica), so every rank (rank 0 logs) has the step's
   figures.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist

from amylum.config import Config
from amylum.data.batch import IGNORE_INDEX, MultimodalBatch
from amylum.parallel.cp_stage import CPMicrobatch
from amylum.runtime.distributed.assembly import RankStage
from amylum.runtime.distributed.gradients import clip_global_grad_norm_
from amylum.runtime.trainer import StatefulLoader, Trainer


class _DroppedMetrics:
    """The metrics sink of every rank but rank 0."""

    def log(self, step: int, kind: str, values: dict[str, float]) -> None:
        pass

    def close(self) -> None:
        pass


def microbatch_rows(rows: int, count: int) -> list[list[int]]:
    """``rows`` samples cut into ``count`` contiguous microbatches whose sizes differ by at most one."""
    if count < 1 or rows < count:
        raise ValueError(f"cannot cut {rows} samples into {count} non-empty microbatches")
    base, extra = divmod(rows, count)
    out, start = [], 0
    for i in range(count):
        size = base + (1 if i < extra else 0)
        out.append(list(range(start, start + size)))
        start += size
    return out


def _targets(batch: MultimodalBatch) -> int:
    return int((batch.labels[:, 1:] != IGNORE_INDEX).sum())


class DistributedTrainer(Trainer):
    def __init__(self, cfg: Config, stage: RankStage, loader: StatefulLoader, *, device: torch.device,
                 num_microbatches: int, modalities: list[str], loader_yields_microbatches: bool = False) -> None:
        self.stage = stage
        self.rank = dist.get_rank()
        self.num_microbatches = num_microbatches
        self.loader_yields_microbatches = loader_yields_microbatches
        self.modalities = modalities  # fixed order: the summed item counts line up on every rank
        # The optimizer and the checkpoints see the stage's parameters under the full model's names.
        super().__init__(cfg, stage.state, loader, device=device, evaluator=None)
        # The stage's tied copy of the embedding is counted by the first LLM stage only.
        self._tp_ranks = stage.executor.layout.tp_group(self.rank)
        self._norm_exclude = []
        if stage.tied and stage.last_llm and not stage.first_llm:
            self._norm_exclude = [stage.module.model.llm.get_input_embeddings().weight]

    def _drop_unseen_branches(self, items: dict[str, int]) -> None:
        """A branch whose modality is in no sample of the global batch got only the idle run's zero
        gradient. On one process it would have no gradient at all, and AdamW would leave it alone
        (no momentum step, no weight decay): drop the zeros so the optimizer does the same."""
        encoders = getattr(self.model, "encoders", {})
        for modality, count in items.items():
            if count == 0 and modality in encoders:
                for p in encoders[modality].parameters():
                    p.grad = None

    def _metrics_writer(self) -> Any:
        return super()._metrics_writer() if self.rank == 0 else _DroppedMetrics()

    def _sum_over_replicas(self, values: list[float], loss: float | None = None) -> list[float]:
        """Sum per-replica figures: only each replica's reporter rank contributes ``values``; with
        ``loss``, the first figure is the loss, to which every CP rank of the last stage adds its share."""
        t = torch.tensor(values if self.stage.reporter else [0.0] * len(values), dtype=torch.float64)
        if loss is not None:
            t = torch.cat([torch.tensor([loss if self.stage.loss_reporter else 0.0], dtype=torch.float64), t])
        if self.device.type == "cuda":
            t = t.to(self.device)
        dist.all_reduce(t)
        return t.tolist()

    def _step_microbatches(self) -> list[MultimodalBatch]:
        """This replica's microbatches of the next step, in the order the executor runs them."""
        if self.loader_yields_microbatches:
            # A balanced iteration is exactly the plan's count of microbatches, so consecutive
            # steps never mix iterations (and a checkpoint between steps sits on a boundary).
            return [self._next_batch() for _ in range(self.num_microbatches)]
        batch = self._next_batch()
        return [batch.select_rows(rows) for rows in microbatch_rows(int(batch.input_ids.shape[0]), self.num_microbatches)]

    def train_step(self) -> dict[str, Any]:
        t = self.cfg.training
        self.model.train()
        self.stage.module.train()
        micro = self._step_microbatches()
        (total_targets,) = self._sum_over_replicas([float(sum(_targets(b) for b in micro))])
        counts = [float(sum(b.num_tokens for b in micro)), float(sum(b.num_samples for b in micro))]
        counts += [float(sum(b.num_items(m) for b in micro)) for m in self.modalities]
        # A CP stage's shards are cut on the host, from the batch as the loader made it.
        shards = [self.stage.sharder.shard(b).to(self.device) for b in micro] if self.stage.sharder else None
        micro = [b.to(self.device, non_blocking=True) for b in micro]
        if shards is not None:
            micro = [CPMicrobatch(b, shard) for b, shard in zip(micro, shards)]
        with self._autocast():
            loss = self.stage.executor.step(micro, num_items_in_batch=max(1, int(total_targets)))
        local_loss = float(loss) if loss is not None else 0.0
        figures = self._sum_over_replicas(counts, loss=local_loss)
        items = {m: int(n) for m, n in zip(self.modalities, figures[3:])}
        self._drop_unseen_branches(items)
        max_norm = t.grad_clip if t.grad_clip > 0 else float("inf")
        params = [p for p in self.model.parameters() if p.requires_grad]
        grad_norm = clip_global_grad_norm_(params, max_norm, self.device, exclude=self._norm_exclude,
                                           tp_width=len(self._tp_ranks))
        lr = self.scheduler.get_last_lr()[0]
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        tokens = int(figures[1])
        return {
            "loss": torch.tensor(figures[0]), "grad_norm": grad_norm, "lr": lr,
            "tokens": tokens, "samples": int(figures[2]),
            "items": {m: n for m, n in items.items() if n},
            "stats": {},
            "energy_tokens": tokens if self.rank == 0 else 0,  # summed over ranks by the energy tally
        }

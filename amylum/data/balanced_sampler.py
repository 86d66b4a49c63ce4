"""A batch sampler that hands every rank its workload-balanced microbatches.

Each epoch is one seeded permutation of the dataset cut into global batches (so *which* samples
share an iteration depends only on ``(seed, epoch)``, never on the policy); a microbatch policy
(:mod:`amylum.planner.microbatch`) then splits every global batch over the DP replicas and their
microbatches. Every rank computes the same plan from the same per-sample work table, so no
communication is needed, and keeps its own replica's part.

Iterating yields this rank's microbatches as lists of dataset indices, in order: the
``microbatches`` of iteration 0, then of iteration 1, … — so it plugs into
``torch.utils.data.DataLoader(dataset, batch_sampler=sampler, collate_fn=...)``. The position is
``state_dict() → {"epoch", "iteration", "microbatch", "seed"}`` and always points past what was
yielded, as :class:`amylum.data.dataset.ResumableLoader` does. (A DataLoader with workers
prefetches ahead of the trainer; checkpoint the trainer's own count, or call ``state_dict`` on a
sampler iterated in the main process.) The tail of an epoch that does not fill a global batch is
left out (the same samples are not moved into another iteration's batch).
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from amylum.planner.microbatch import PROFILED, check_assignment, check_profile, get_policy
from amylum.planner.workload import WorkTable

STATE_KEYS = ("epoch", "iteration", "microbatch", "seed")


class BalancedBatchSampler:
    """Balanced microbatches for rank ``rank`` of ``replicas`` DP replicas (1 for one device).

    Args:
        work: per-sample work of the whole dataset (row i = dataset index i), e.g. from
            :func:`amylum.planner.workload.work_table`.
        global_batch: samples per iteration over all replicas.
        microbatches: microbatches per replica per iteration.
        replicas, rank: data-parallel size and this rank's replica.
        policy: a name in :data:`amylum.planner.microbatch.POLICIES`.
        seed: the epoch order is ``default_rng([seed, epoch]).permutation(n)``.
        profile: optional load profile for a pipelined replica, shares per microbatch (and
            column), e.g. :func:`amylum.planner.load_profile.profile_from_plan`; policies in
            :data:`amylum.planner.microbatch.PROFILED` only.
    """

    def __init__(self, work: WorkTable, global_batch: int, microbatches: int, replicas: int = 1, rank: int = 0,
                 policy: str = "hierarchical", seed: int = 0, shuffle: bool = True, profile=None):
        n = len(work)
        if replicas < 1 or microbatches < 1:
            raise ValueError(f"need >= 1 replica and >= 1 microbatch, got {replicas} x {microbatches}")
        if not 0 <= rank < replicas:
            raise ValueError(f"rank {rank} is not in [0, {replicas})")
        if global_batch < replicas * microbatches:
            raise ValueError(f"global_batch {global_batch} is smaller than replicas × microbatches = "
                             f"{replicas * microbatches}: some microbatch would be empty")
        if global_batch > n:
            raise ValueError(f"global_batch {global_batch} exceeds the dataset's {n} samples")
        self.work = work
        self.global_batch = int(global_batch)
        self.microbatches = int(microbatches)
        self.replicas = int(replicas)
        self.rank = int(rank)
        self.policy_name = policy
        self.policy = get_policy(policy)
        if profile is not None and policy not in PROFILED:
            raise ValueError(f"policy {policy!r} takes no load profile; policies that do: {', '.join(PROFILED)}")
        self.profile = None if profile is None else check_profile(profile, microbatches, work.matrix.shape[1])
        self.seed = int(seed)
        self.shuffle = shuffle
        self.epoch = 0
        self.iteration = 0  # iterations of this epoch fully or partly yielded
        self.microbatch = 0  # microbatches of ``iteration`` already yielded

    @property
    def iterations_per_epoch(self) -> int:
        return len(self.work) // self.global_batch

    def __len__(self) -> int:
        """Microbatches this rank yields per epoch."""
        return self.iterations_per_epoch * self.microbatches

    def order(self, epoch: int) -> np.ndarray:
        n = len(self.work)
        return np.random.default_rng([self.seed, epoch]).permutation(n) if self.shuffle else np.arange(n)

    def plan(self, epoch: int, iteration: int) -> list[list[list[int]]]:
        """``[replica][microbatch]`` → dataset indices for one iteration: a pure function of
        (seed, epoch, iteration), identical on every rank."""
        if not 0 <= iteration < self.iterations_per_epoch:
            raise ValueError(f"iteration {iteration} outside [0, {self.iterations_per_epoch})")
        ids = self.order(epoch)[iteration * self.global_batch:(iteration + 1) * self.global_batch]
        # the policy's own seed (used by "random") is derived, so iterations never share a stream
        pseed = int(np.random.SeedSequence([self.seed, epoch, iteration]).generate_state(1)[0])
        extra = {} if self.profile is None else {"profile": self.profile}
        a = self.policy(self.work.take(ids), self.replicas, self.microbatches, seed=pseed, **extra)
        check_assignment(a, len(ids), self.replicas, self.microbatches)
        return [[ids[idx].tolist() for idx in mbs] for mbs in a]

    def _advance(self, whole_iteration: bool = False) -> None:
        # the epoch rolls over as soon as its last microbatch is handed out, so a checkpoint taken
        # right after it resumes at the next epoch's start
        self.microbatch = 0 if whole_iteration else self.microbatch + 1
        if whole_iteration or self.microbatch == self.microbatches:
            self.microbatch = 0
            self.iteration += 1
            if self.iteration >= self.iterations_per_epoch:
                self.epoch, self.iteration = self.epoch + 1, 0

    def __iter__(self) -> Iterator[list[int]]:
        """The rest of the current epoch for this rank."""
        epoch = self.epoch
        while self.epoch == epoch:
            it = self.iteration
            mine = self.plan(epoch, it)[self.rank]
            while self.epoch == epoch and self.iteration == it:
                mbatch = mine[self.microbatch]
                self._advance()
                yield mbatch  # the position already points past this microbatch

    def iterations(self) -> Iterator[list[list[int]]]:
        """Like ``__iter__`` but one item per iteration: this rank's ``microbatches`` index lists.

        Resumes at the next whole iteration if a checkpoint fell mid-iteration."""
        if self.microbatch:
            self._advance(whole_iteration=True)
        epoch = self.epoch
        while self.epoch == epoch:
            mine = self.plan(epoch, self.iteration)[self.rank]
            self._advance(whole_iteration=True)
            yield mine

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "iteration": self.iteration, "microbatch": self.microbatch, "seed": self.seed}

    def load_state_dict(self, state: dict[str, int]) -> None:
        missing = set(STATE_KEYS) - set(state)
        if missing:
            raise ValueError(f"sampler state lacks {sorted(missing)}: got {state}")
        it, mbi = int(state["iteration"]), int(state["microbatch"])
        if not 0 <= it < self.iterations_per_epoch or not 0 <= mbi < self.microbatches:
            raise ValueError(f"sampler state {state} is outside this sampler's epoch "
                             f"({self.iterations_per_epoch} iterations × {self.microbatches} microbatches)")
        self.epoch, self.iteration, self.microbatch, self.seed = int(state["epoch"]), it, mbi, int(state["seed"])

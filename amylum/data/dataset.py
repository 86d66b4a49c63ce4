"""A records file + media folder as a torch Dataset, and a deterministic, resumable loader.

Records are parsed up front (small JSON), media are loaded lazily in ``__getitem__``;
``work_table`` estimates every sample's encoder and LLM work from the records alone.
The loader's order is a pure function of ``(seed, epoch)``, so a trainer that checkpoints
``loader.state_dict()`` → ``{"epoch", "index", "seed"}`` resumes on exactly the next batch.
With ``balance`` set, the loader yields workload-balanced microbatches
(:mod:`amylum.data.balanced_sampler`; docs/microbatching.md).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from amylum.data.balanced_sampler import BalancedBatchSampler
from amylum.data.batch import MultimodalBatch
from amylum.data.errors import BAD_AUDIO, DataError, SkipCounter, logger
from amylum.data.processor import MultimodalProcessor
from amylum.data.records import load_records
from amylum.data.sample import ProcessedSample
from amylum.planner.microbatch import POLICIES
from amylum.planner.workload import (
    Features, SampleMeta, WorkCoefficients, WorkTable, sample_meta_from_record, work_table)

# "none": plain shuffled batches; otherwise a microbatch policy of amylum.planner.microbatch
BALANCE_MODES = ("none", *POLICIES)


class MultimodalDataset(torch.utils.data.Dataset):
    """Records from ``records_path``; media paths resolve against ``media_root``
    (default: the records file's folder). Uses the processor's ``on_error``: under ``"skip"``
    an invalid record is dropped at load time and one whose media fail returns ``None``
    (and is remembered, so it is counted once and not re-read every epoch).
    """

    def __init__(self, records_path: str | Path, processor: MultimodalProcessor, media_root: str | Path | None = None):
        self.path = Path(records_path)
        self.processor = processor
        self.media_root = Path(media_root) if media_root is not None else self.path.parent
        self._invalid = SkipCounter()
        self.records = load_records(self.path, processor.on_error, self._invalid)
        self._failed = SkipCounter()
        self._bad: set[int] = set()

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> ProcessedSample | None:
        if index in self._bad:
            return None
        try:
            return self.processor.process(self.records[index], self.media_root)
        except DataError as e:
            if self.processor.on_error == "raise":
                raise
            self._bad.add(index)
            self._failed.add(e)
            return None

    @property
    def skipped(self) -> SkipCounter:
        """Bad records skipped so far: invalid at load time plus failed on access (each counted once)."""
        total = SkipCounter()
        total.merge(self._invalid)
        total.merge(self._failed)
        return total

    @property
    def num_skipped(self) -> int:
        return self._invalid.count + self._failed.count

    # ----------------------------------------------------------------- work, before loading

    def sample_metas(self) -> list[SampleMeta]:
        """Token counts of every sample from its record: text through the processor's tokenizer,
        images through the modality specs, audio from ``audio_seconds`` / ``audio_num_samples``
        in the record or else the sound file's header (no sample is decoded). Under ``"skip"`` a
        record whose metadata cannot be read counts as one text token (loading will skip it)."""
        tok = self.processor.tokenizer
        specs = self.processor.specs
        metas = []
        for r in self.records:
            try:
                metas.append(sample_meta_from_record(
                    r, specs, text_tokens=lambda t: len(tok(t, add_special_tokens=False)["input_ids"]),
                    audio_length=lambda p, sr, rid=r.id: self._audio_length(p, sr, rid)))
            except ValueError as e:  # DataError is a ValueError too
                if self.processor.on_error == "raise":
                    raise DataError(r.id, f"its work cannot be estimated before loading: {e}") from None
                metas.append(SampleMeta(text_tokens=1))
        return metas

    def work_table(self, coefficients: WorkCoefficients) -> WorkTable:
        """Per-sample encoder and LLM work (row i = sample i), e.g. with
        ``amylum.planner.workload.coefficients_from_model(model)``."""
        return work_table(Features.from_metas(self.sample_metas(), modalities=coefficients.modalities), coefficients)

    def _audio_length(self, path: str, sampling_rate: int, record_id: str) -> int:
        import soundfile as sf  # the header only: frames and rate, no samples are read

        p = Path(path)
        p = p if p.is_absolute() else self.media_root / p
        try:
            info = sf.info(str(p))
        except (sf.LibsndfileError, RuntimeError, OSError) as e:
            raise DataError(record_id, f"audio file {str(p)!r} has no readable header: {e}", BAD_AUDIO) from None
        return max(1, round(info.frames * sampling_rate / info.samplerate))


class ResumableLoader:
    """Seeded, shuffled batches of :class:`MultimodalBatch` with a checkpointable position.

    Iterating yields the rest of the current epoch, then moves to the next epoch. With
    ``world_size > 1`` every rank takes a strided, equal-length share of the epoch's order.
    Skipped (bad) records are consumed without filling a batch slot.

    **Balanced mode** (``balance="hierarchical"`` or another policy name, with ``work`` from
    :meth:`MultimodalDataset.work_table`): each iteration takes the next
    ``batch_size × microbatches × world_size`` samples of the epoch's order (the global batch),
    splits them over the ``world_size`` data-parallel replicas and each replica's
    ``microbatches`` by work, and this rank yields its ``microbatches`` microbatches in the
    policy's order (heavy LLM work first, deferred excess later; or, with ``profile`` from
    :func:`amylum.planner.load_profile.profile_from_plan`, light pipeline fill and drain
    microbatches and heavier ones between). ``batch_size`` is then the
    *mean* samples per microbatch: counts vary, work is even. Every rank computes the same plan
    from the same ``work`` and ``seed``, with no communication. The tail of an epoch that does
    not fill a global batch is left out (``drop_last`` does not apply), and a microbatch whose
    samples were all skipped as bad is not yielded. The state is ``{"epoch", "index", "seed",
    "balance"}`` with ``index`` = this rank's microbatches of the epoch already yielded.
    """

    def __init__(
        self,
        dataset: MultimodalDataset,
        batch_size: int,
        seed: int = 0,
        shuffle: bool = True,
        pack: bool = False,
        max_length: int | None = None,
        drop_last: bool = False,
        rank: int = 0,
        world_size: int = 1,
        *,
        balance: str = "none",
        microbatches: int = 1,
        work: WorkTable | None = None,
        profile: np.ndarray | None = None,
    ):
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not in [0, {world_size})")
        if balance not in BALANCE_MODES:
            raise ValueError(f"balance = {balance!r}; choose from {', '.join(BALANCE_MODES)}")
        self.dataset = dataset
        self.batch_size = batch_size
        self.seed = int(seed)
        self.shuffle = shuffle
        self.pack = pack
        self.max_length = max_length
        self.drop_last = drop_last
        self.rank = rank
        self.world_size = world_size
        self.balance = balance
        self.epoch = 0
        self.index = 0  # positions of this rank's epoch order already consumed
        # balanced mode: the position lives in the sampler (state_dict maps it to epoch/index)
        self.sampler: BalancedBatchSampler | None = None
        if balance != "none":
            if work is None:
                raise ValueError(f"balance = {balance!r} needs work=: per-sample work of the dataset, e.g. "
                                 "dataset.work_table(coefficients_from_model(model))")
            if len(work) != len(dataset):
                raise ValueError(f"work has {len(work)} rows for a dataset of {len(dataset)} samples")
            global_batch = batch_size * microbatches * world_size
            if global_batch > len(dataset):
                raise ValueError(f"global batch = batch_size {batch_size} × microbatches {microbatches} × world_size "
                                 f"{world_size} = {global_batch} exceeds the dataset's {len(dataset)} samples")
            self.sampler = BalancedBatchSampler(work, global_batch, microbatches, replicas=world_size, rank=rank,
                                                policy=balance, seed=self.seed, shuffle=shuffle, profile=profile)
        elif work is not None or microbatches != 1 or profile is not None:
            raise ValueError("work, microbatches and profile apply only with balance set (got balance='none')")

    def order(self, epoch: int) -> np.ndarray:
        n = len(self.dataset)
        if self.shuffle:
            perm = np.random.default_rng([self.seed, epoch]).permutation(n)
        else:
            perm = np.arange(n)
        per_rank = n // self.world_size
        return perm[self.rank : per_rank * self.world_size : self.world_size]

    def __len__(self) -> int:
        """Batches per epoch (fewer if records get skipped)."""
        if self.sampler is not None:
            return len(self.sampler)
        n = len(self.dataset) // self.world_size
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def __iter__(self) -> Iterator[MultimodalBatch]:
        if self.sampler is not None:
            yield from self._balanced()
            return
        order = self.order(self.epoch)
        pending: list[ProcessedSample] = []
        while self.index < len(order):
            sample = self.dataset[int(order[self.index])]
            self.index += 1
            if sample is not None:
                pending.append(sample)
            if len(pending) == self.batch_size:
                batch = self._collate(pending)
                pending = []
                yield batch  # index already points past this batch: a checkpoint here resumes after it
        if pending and not self.drop_last:
            yield self._collate(pending)
        if self.dataset.num_skipped:
            logger.info("epoch %d: %s", self.epoch, self.dataset.skipped.summary())
        self.epoch += 1
        self.index = 0

    def _balanced(self) -> Iterator[MultimodalBatch]:
        s = self.sampler
        epoch = s.epoch
        for indices in s:  # the sampler's position already points past each microbatch it yields
            samples = [x for x in (self.dataset[i] for i in indices) if x is not None]
            if samples:
                yield self._collate(samples)
            else:
                logger.warning("epoch %d: every sample of a microbatch was skipped as bad; it is not yielded", epoch)
        if self.dataset.num_skipped:
            logger.info("epoch %d: %s", epoch, self.dataset.skipped.summary())

    def _collate(self, samples: list[ProcessedSample]) -> MultimodalBatch:
        return self.dataset.processor.collate(samples, pack=self.pack, max_length=self.max_length)

    def state_dict(self) -> dict[str, int | str]:
        s = self.sampler
        if s is None:
            return {"epoch": self.epoch, "index": self.index, "seed": self.seed}
        return {"epoch": s.epoch, "index": s.iteration * s.microbatches + s.microbatch, "seed": s.seed,
                "balance": self.balance}

    def load_state_dict(self, state: dict[str, int | str]) -> None:
        missing = {"epoch", "index", "seed"} - set(state)
        if missing:
            raise ValueError(f"loader state lacks {sorted(missing)}: got {state}")
        saved = state.get("balance", "none")
        if saved != self.balance:
            raise ValueError(f"loader state was saved with balance = {saved!r}, this loader has {self.balance!r}: "
                             "resume with the same data.balance")
        self.epoch, self.index, self.seed = int(state["epoch"]), int(state["index"]), int(state["seed"])
        if self.sampler is not None:
            m = self.sampler.microbatches
            self.sampler.load_state_dict({"epoch": self.epoch, "iteration": self.index // m,
                                          "microbatch": self.index % m, "seed": self.seed})

"""One training step (forward, backward, optimizer step) captured once and replayed as a CUDA graph.

Why: on one H100 the VLM step of ``bench/gpu_step.py`` is bound by host time, not by its
kernels. It makes about 1,500 kernel launches, and FlashAttention-4 is entered through Python
at every call: kernels take about 136 ms of a 144 ms step (docs/BENCHMARKS.md, issue 5). A
replayed graph launches all of them with one host call.

What a graph fixes, and what this class therefore checks for every batch:

* **Shapes and host-side values.** The graph replays the kernels of the captured step with the
  captured shapes, and any Python decision the model made from host data (modalities, item
  lengths, the number of target tokens) is frozen into it. Every batch must have the
  *signature* of the first one (:func:`batch_signature`); another one is refused with the
  field that differs. Fixed-length packing gives one signature per run.
* **Inputs.** The graph reads fixed device buffers. Each call copies the new batch's tensors,
  its host-derived index (``BatchIndex``) and its attention-mask specs into them before replay.
* **The optimizer.** Its step must be capturable (``capturable=True`` for Adam/AdamW, fused or
  foreach); its state is created in the eager warm-up steps. A float learning rate is baked
  into the graph: a schedule needs ``lr`` as a device tensor (changed in place between calls).
* **No host work inside.** A host-to-device copy in the step is refused during capture
  (``amylum.device_copy``), and so is anything that reads device values on the host.

Each call is exactly one training step: the first ``warmup`` calls run eagerly on a side stream
(they compile kernels and create optimizer state), the next one captures and replays.
"""

from __future__ import annotations

import contextlib
import dataclasses
import types
from collections.abc import Callable

import torch

from amylum.attention.mask import MaskSpec, mask_spec
from amylum.data.batch import BatchIndex, MultimodalBatch


def batch_tensors(batch: MultimodalBatch) -> dict[str, torch.Tensor]:
    """Every device tensor a step reads from ``batch``, by a stable name (fields, encoder inputs,
    the host-derived index and the kept attention-mask specs)."""
    out = {name: getattr(batch, name) for name in MultimodalBatch._TENSOR_FIELDS}
    for modality, inputs in sorted(batch.encoder_inputs.items()):
        for key, value in sorted(inputs.items()):
            out[f"encoder_inputs.{modality}.{key}"] = value
    index = batch.index
    if index is not None:
        out["index.target_positions"] = index.target_positions
        out["index.target_labels"] = index.target_labels
        for modality, positions in sorted(index.modality_positions.items()):
            out[f"index.modality_positions.{modality}"] = positions
        for mode, spec in sorted(index.mask_specs.items()):
            for part in ("lo", "hi", "sample_ids", "segment_ids"):
                out[f"index.mask_specs.{mode}.{part}"] = getattr(spec, part)
    return out


def batch_signature(batch: MultimodalBatch) -> dict[str, object]:
    """What must not change between the captured batch and a replayed one: tensor shapes and
    dtypes, and the host-side values the model branches on."""
    sig: dict[str, object] = {name: (tuple(t.shape), t.dtype) for name, t in batch_tensors(batch).items()}
    sig["modalities"] = tuple(batch.modalities)
    sig["item_tokens"] = {m: tuple(v) for m, v in sorted(batch.item_tokens.items())}
    return sig


def _owned_copy(batch: MultimodalBatch) -> MultimodalBatch:
    """``batch`` with every tensor cloned: the graph's inputs, which later batches are copied into
    (a batch the caller still holds must not change under it)."""
    index = batch.index
    specs = {mode: MaskSpec(spec.lo.clone(), spec.hi.clone(), spec.sample_ids.clone(), spec.segment_ids.clone(), mode)
             for mode, spec in index.mask_specs.items()}
    owned_index = BatchIndex(
        index.target_positions.clone(), index.target_labels.clone(),
        {m: p.clone() for m, p in index.modality_positions.items()},
        index.host_sample_ids, index.host_segment_ids, specs,
    )
    return dataclasses.replace(
        batch, **{name: getattr(batch, name).clone() for name in MultimodalBatch._TENSOR_FIELDS},
        encoder_inputs={m: {k: v.clone() for k, v in d.items()} for m, d in batch.encoder_inputs.items()},
        index=owned_index,
    )


def _signature_difference(expected: dict, got: dict) -> str | None:
    for key in sorted(set(expected) | set(got), key=str):
        if expected.get(key) != got.get(key):
            return f"{key}: captured {expected.get(key, 'absent')}, this batch {got.get(key, 'absent')}"
    return None


def _check_capturable(optimizer: torch.optim.Optimizer) -> None:
    for i, group in enumerate(optimizer.param_groups):
        if "capturable" in group and not group["capturable"]:
            raise ValueError(
                f"optimizer param group {i} is not capturable: build it with capturable=True "
                f"(e.g. torch.optim.AdamW(params, fused=True, capturable=True)) to replay its step in a CUDA graph"
            )
        if "capturable" not in group and type(optimizer).__name__ not in ("SGD",):
            raise ValueError(
                f"{type(optimizer).__name__} has no 'capturable' option; its step may sync with the host "
                "and cannot be replayed in a CUDA graph"
            )


def _cuda_graph_capture(fn: Callable[[], None]) -> Callable[[], None]:
    """Capture ``fn``'s kernels into a CUDA graph; return its replay."""
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    return graph.replay


class GraphedTrainStep:
    """``step(batch) -> loss``: ``loss_fn(batch).backward()``, then ``optimizer.step()``, as one graph.

    Args:
        loss_fn: ``batch -> scalar loss`` (e.g. ``lambda b: model(b).loss``); it must not read
            device values on the host.
        optimizer: a capturable optimizer over the trainable parameters.
        warmup: eager steps before the capture (at least 1: kernels compile and the optimizer
            creates its state there; 3 is what PyTorch's docs use).
        before_optimizer: optional ``() -> None`` run between backward and the optimizer step,
            captured too (e.g. ``clip_grad_norm_(..., foreach=True)``, which does not sync).
        capture: how a step is captured (tests pass one that re-runs the step eagerly at each
            "replay", to check the input plumbing on a CPU).

    The returned loss is a copy, safe to keep across calls and read asynchronously.
    """

    def __init__(
        self,
        loss_fn: Callable[[MultimodalBatch], torch.Tensor],
        optimizer: torch.optim.Optimizer,
        *,
        warmup: int = 3,
        before_optimizer: Callable[[], None] | None = None,
        capture: Callable[[Callable[[], None]], Callable[[], None]] | None = None,
    ) -> None:
        if warmup < 1:
            raise ValueError("warmup must be at least 1: the optimizer's state is created in an eager step")
        _check_capturable(optimizer)
        self.loss_fn, self.optimizer, self.warmup = loss_fn, optimizer, warmup
        self.before_optimizer = before_optimizer
        self._capture = capture or _cuda_graph_capture
        self.steps = 0
        self._static: MultimodalBatch | None = None
        self._signature: dict | None = None
        self._loss: torch.Tensor | None = None
        self._replay: Callable[[], None] | None = None

    @property
    def captured(self) -> bool:
        return self._replay is not None

    def _eager_step(self, batch: MultimodalBatch) -> torch.Tensor:
        loss = self.loss_fn(batch)
        loss.backward()
        if self.before_optimizer is not None:
            self.before_optimizer()
        self.optimizer.step()
        return loss

    def _device_batch(self, batch: MultimodalBatch, device: torch.device) -> MultimodalBatch:
        if batch.input_ids.device.type == "cpu":
            return batch.to(device, non_blocking=True)  # with its host-derived index
        if batch.index is None or batch.index.host_sample_ids is None:
            raise ValueError(
                "a device batch without a host-derived index cannot feed a CUDA graph (its positions and mask "
                "would be read back from the device): pass the CPU batch, or one moved with MultimodalBatch.to()"
            )
        return batch

    def _refresh(self, batch: MultimodalBatch) -> None:
        """Copy ``batch`` into the static inputs (same signature), mask specs included."""
        static = self._static
        index = batch.index
        # The new batch's masks, built and validated on the host, for every mode the step uses.
        for mode, spec in static.index.mask_specs.items():
            if mode not in index.mask_specs:
                host = types.SimpleNamespace(sample_ids=index.host_sample_ids, segment_ids=index.host_segment_ids)
                index.mask_specs[mode] = mask_spec(host, mode).to(spec.lo.device, non_blocking=True)
        signature = batch_signature(batch)
        diff = _signature_difference(self._signature, signature)
        if diff is not None:
            raise ValueError(
                f"this batch does not match the batch the CUDA graph was captured with ({diff}); a graph replays "
                "fixed shapes and host-side values: pack every batch to the same layout, or train without the graph"
            )
        targets = batch_tensors(static)
        for name, value in batch_tensors(batch).items():
            targets[name].copy_(value, non_blocking=True)
        static.index.host_sample_ids = index.host_sample_ids
        static.index.host_segment_ids = index.host_segment_ids

    def __call__(self, batch: MultimodalBatch) -> torch.Tensor:
        device = next(p.device for group in self.optimizer.param_groups for p in group["params"])
        batch = self._device_batch(batch, device)
        if self.steps < self.warmup:
            side = torch.cuda.Stream() if device.type == "cuda" else None
            if side is not None:
                side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side) if side is not None else contextlib.nullcontext():
                loss = self._eager_step(batch).detach()
                self.optimizer.zero_grad(set_to_none=True)
            if side is not None:
                torch.cuda.current_stream().wait_stream(side)
            self.steps += 1
            if self.steps == self.warmup:
                self._static = _owned_copy(batch)  # its index keeps the device mask specs the forward used
                self._signature = batch_signature(batch)
            return loss
        if self._replay is None:
            self._refresh(batch)

            def step() -> None:
                self._loss = self._eager_step(self._static).detach()

            # Gradients are None here, so the captured backward writes them (no accumulation), and
            # the optimizer reads them from the graph's memory.
            self.optimizer.zero_grad(set_to_none=True)
            self._replay = self._capture(step)
        else:
            self._refresh(batch)  # a batch of another layout is refused here, before any step is counted
        self._replay()
        self.steps += 1
        return self._loss.clone()


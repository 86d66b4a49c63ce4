"""Representations compared by CKA: encoders on task images, LLMs on projected task prompts.

Encoders: mean over an image's feature tokens, one row per image. Mean-pooling is what makes
encoders with different token counts (patch 4 vs 8) comparable on the same n inputs.
LLMs: the decoder's last hidden states, mean-pooled over each prompt's tokens (prompt = task
record up to its answer, so it holds the image's projected tokens and the question).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn


def task_image_paths(records: Path, limit: int) -> list[Path]:
    """The first ``limit`` distinct images of the task records (the encoders' common inputs)."""
    from amylum.data.records import load_records

    seen: list[Path] = []
    for rec in load_records(records, "skip"):
        for item in rec.media.get("image", []):
            path = (records.parent / item).resolve()
            if path not in seen:
                seen.append(path)
            if len(seen) == limit:
                return seen
    if len(seen) < 4:
        raise ValueError(f"{records} has {len(seen)} images; CKA needs at least 4")
    return seen


@torch.no_grad()
def encoder_features(branch: nn.Module, images: list[Path], batch_size: int = 64) -> torch.Tensor:
    """(n_images, encoder width): mean-pooled features of a ``ModalityEncoder``'s encoder."""
    from amylum.data.image import load_pixels

    branch.eval()
    device = next(branch.parameters()).device
    rows = []
    for start in range(0, len(images), batch_size):
        pixels = torch.stack([load_pixels(p, branch.input_spec) for p in images[start : start + batch_size]])
        rows.append(branch.encode(**{branch.input_spec.input_name: pixels.to(device)}).float().mean(dim=1).cpu())
    return torch.cat(rows)


@torch.no_grad()
def llm_features(model: nn.Module, records: Path, tokenizer, *, limit: int, max_length: int, batch_size: int = 32) -> torch.Tensor:
    """(n_prompts, LLM width): mean of the last hidden states over each task prompt's tokens."""
    from amylum.data.dataset import MultimodalDataset
    from amylum.data.processor import MultimodalProcessor

    processor = MultimodalProcessor(tokenizer, model.modality_specs(), max_length=max_length, mode="generate")
    dataset = MultimodalDataset(records, processor)
    # Only image prompts: text-only prompts would measure the LLMs without the encoder.
    picked = [i for i, r in enumerate(dataset.records) if r.media.get("image")][:limit]
    if len(picked) < 4:
        raise ValueError(f"{records} has {len(picked)} image records; CKA needs at least 4")
    model.eval()
    device = next(model.parameters()).device
    rows = []
    for start in range(0, len(picked), batch_size):
        samples = [dataset[i] for i in picked[start : start + batch_size]]
        batch = processor.collate([s for s in samples if s is not None]).to(device)
        states = model.decode(model.embed(batch), batch).float()
        valid = (batch.sample_ids >= 0).unsqueeze(-1).float()
        rows.append(((states * valid).sum(1) / valid.sum(1).clamp_min(1)).cpu())
    return torch.cat(rows)

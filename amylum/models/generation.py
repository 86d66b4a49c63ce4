"""Batched generation with a MultimodalLM: greedy or sampled (temperature, top-p, seed).

Built only on the model's public pieces (``model.embed``, ``model.llm``, ``attention_inputs``):
one sample per row, right-padded prompts are left-aligned so new tokens append on the right,
encoders run once, and each step re-runs the LLM over the whole prefix (no KV cache: the
multimodal mask stays exact; fine for the short answers evaluation asks for).
``MultimodalLM.generate`` and the evaluation package both call :func:`generate`.

Under a sharded runtime every rank must run the same number of LLM forwards, so the early stop
on ``<eos>`` asks ``all_done`` (e.g. an all-reduce over ranks) instead of deciding locally.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from types import SimpleNamespace

import torch

from amylum.attention import attention_inputs


@dataclass(frozen=True)
class Sampling:
    """How the next token is picked. ``temperature = 0`` is greedy (argmax), and ignores the rest."""

    temperature: float = 0.0
    top_p: float = 1.0
    seed: int = 0

    def __post_init__(self) -> None:
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


def pick_tokens(logits: torch.Tensor, sampling: Sampling, generator: torch.Generator | None) -> torch.Tensor:
    """(rows, vocab) logits → (rows,) token ids."""
    if sampling.greedy:
        return logits.argmax(dim=-1)
    probs = torch.softmax(logits.float() / sampling.temperature, dim=-1)
    if sampling.top_p < 1:
        # Nucleus: keep the smallest set of most likely tokens whose mass reaches top_p (always >= 1 token).
        sorted_probs, order = probs.sort(dim=-1, descending=True)
        before = sorted_probs.cumsum(dim=-1) - sorted_probs
        sorted_probs = sorted_probs.masked_fill(before >= sampling.top_p, 0.0)
        probs = torch.zeros_like(probs).scatter(-1, order, sorted_probs)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


@torch.no_grad()
def generate(
    model,
    batch,
    *,
    max_new_tokens: int,
    eos_token_id: int | None = None,
    sampling: Sampling = Sampling(),
    all_done: Callable[[bool], bool] | None = None,
) -> list[list[int]]:
    """New token ids per row (without the prompt, cut before the first ``eos_token_id``).

    ``all_done(local_done) -> bool``: whether every rank has finished; default: this rank alone.
    """
    if max_new_tokens < 1:
        raise ValueError("max_new_tokens must be >= 1")
    if bool((batch.sample_ids > 0).any()):
        raise ValueError("generation takes one sample per row; got a packed batch (collate with pack=False)")
    embeds = model.embed(batch)
    device = embeds.device
    seq = batch.input_ids.shape[1]
    lengths = (batch.sample_ids >= 0).sum(dim=1)
    # Left-align: rotate each row right by its padding, so padding sits in front and every
    # prompt ends in the last column.
    index = (torch.arange(seq, device=device)[None, :] - (seq - lengths)[:, None]) % seq
    take = lambda t: torch.gather(t, 1, index)  # noqa: E731
    embeds = torch.gather(embeds, 1, index[..., None].expand_as(embeds))
    seg = SimpleNamespace(sample_ids=take(batch.sample_ids), segment_ids=take(batch.segment_ids), kinds=take(batch.kinds))
    positions = take(batch.position_ids)
    embedding = model.llm.get_input_embeddings()
    generator = None
    if not sampling.greedy:
        generator = torch.Generator(device=device)
        generator.manual_seed(sampling.seed)
    rows = embeds.shape[0]
    out: list[list[int]] = [[] for _ in range(rows)]
    done = [False] * rows
    append = lambda t, v: torch.cat([t, torch.full_like(t[:, :1], v)], dim=1)  # noqa: E731
    for _ in range(max_new_tokens):
        attn = attention_inputs(seg, mode=model.mask_mode, backend=model.attention_backend)
        logits = model.llm(inputs_embeds=embeds, position_ids=positions, use_cache=False, **attn).logits[:, -1]
        nxt = pick_tokens(logits, sampling, generator)
        for r, tok in enumerate(nxt.tolist()):
            if not done[r]:
                out[r].append(tok)
                done[r] = eos_token_id is not None and tok == eos_token_id
        finished = all(done)
        if (all_done(finished) if all_done is not None else finished):
            break
        embeds = torch.cat([embeds, embedding(nxt)[:, None].to(embeds.dtype)], dim=1)
        seg = SimpleNamespace(sample_ids=append(seg.sample_ids, 0), segment_ids=append(seg.segment_ids, -1),
                              kinds=append(seg.kinds, 0))
        positions = torch.cat([positions, positions[:, -1:] + 1], dim=1)
    if eos_token_id is not None:
        out = [o[: o.index(eos_token_id)] if eos_token_id in o else o for o in out]
    return out

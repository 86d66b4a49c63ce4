"""Target-task scores of a pair: answer accuracy (greedy decoding) or answer loss (teacher-forced).

Self-contained on purpose: the search calls it on every rung, and it only needs
``MultimodalLM.generate`` / ``forward`` and the processor, not a run's evaluation suite.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import torch
from torch import nn

MAX_NEW_TOKENS = 8  # task answers are short (a number, yes/no) plus <eos>


def make_task_evaluator(
    metric: str, records: Path, tokenizer, specs: dict, *, max_length: int, max_samples: int = 0,
    batch_size: int = 50, device: torch.device = torch.device("cpu"),
) -> Callable[[nn.Module], dict[str, float]]:
    """``evaluate(model) -> {"accuracy": …, "accuracy/<task>": …}`` or ``{"loss": …}``."""
    from amylum.data.dataset import MultimodalDataset
    from amylum.data.demo import normalize_answer
    from amylum.data.processor import MultimodalProcessor

    mode = "train" if metric == "loss" else "generate"
    processor = MultimodalProcessor(tokenizer, specs, max_length=max_length, mode=mode)
    dataset = MultimodalDataset(records, processor)
    n = len(dataset) if max_samples == 0 else min(len(dataset), max_samples)
    if n == 0:
        raise ValueError(f"the task data {records} holds no records")

    def batches():
        for start in range(0, n, batch_size):
            samples = [x for x in (dataset[i] for i in range(start, min(n, start + batch_size))) if x is not None]
            if samples:
                yield samples, processor.collate(samples).to(device)

    def evaluate(model: nn.Module) -> dict[str, float]:
        was_training = model.training
        model.eval()
        try:
            # Forked RNG: evaluating must not change the training trajectory of a resumed pair.
            with torch.random.fork_rng(devices=[]), torch.no_grad():
                if metric == "loss":
                    total, count = 0.0, 0
                    for _, batch in batches():
                        out = model(batch)
                        k = int(out.num_target_tokens)
                        total, count = total + float(out.loss) * k, count + k
                    return {"loss": total / max(1, count)}
                hits: dict[str, list[int]] = {}
                for samples, batch in batches():
                    generated = model.generate(batch, max_new_tokens=MAX_NEW_TOKENS, eos_token_id=processor.eos_token_id)
                    for sample, ids in zip(samples, generated):
                        ok = int(normalize_answer(processor.decode(ids)) == normalize_answer(sample.reference))
                        hits.setdefault("all", []).append(ok)
                        if sample.extra.get("task"):
                            hits.setdefault(sample.extra["task"], []).append(ok)
                scores = {"accuracy": sum(hits["all"]) / len(hits["all"])}
                scores.update({f"accuracy/{t}": sum(v) / len(v) for t, v in sorted(hits.items()) if t != "all"})
                return scores
        finally:
            model.train(was_training)

    return evaluate

"""One comparison loop for every parallel test: a parallelised step against the single-process reference."""

from __future__ import annotations

import torch

TOL = 2e-5  # fp32 on CPU: only summation order differs between sharded and reference runs


def full(t: torch.Tensor) -> torch.Tensor:
    """The whole tensor behind a DTensor (FSDP/TP shard), or the tensor itself."""
    return t.full_tensor() if hasattr(t, "full_tensor") else t


def compare_steps(step, ref_step, named, ref, *, steps: int = 3, lr: float = 1e-3, label: str = "") -> float:
    """Run ``steps`` AdamW steps on both sides; assert losses and every gradient agree within TOL.

    ``step()`` runs the parallel forward + backward and returns a loss comparable with the
    reference's (or None where this rank holds no loss); ``ref_step()`` does the same for the
    reference and returns its loss; ``named``: (reference parameter name, parallel parameter)
    for the parameters this rank holds. Returns the largest difference seen.
    """
    ref_params = dict(ref.named_parameters())
    opt = torch.optim.AdamW([p for _, p in named if p.requires_grad], lr=lr)
    ref_opt = torch.optim.AdamW([p for p in ref.parameters() if p.requires_grad], lr=lr)
    worst = 0.0
    for _ in range(steps):
        ref_loss = ref_step()
        loss = step()
        if loss is not None:
            diff = abs(float(loss) - float(ref_loss))
            assert diff < TOL, f"{label}loss {float(loss)} differs from the reference {float(ref_loss)}"
            worst = max(worst, diff)
        for name, p in named:
            q = ref_params[name]
            if q.grad is None:
                assert p.grad is None, f"{label}{name} got a gradient the reference did not"
                continue
            assert p.grad is not None, f"{label}{name}: no gradient"
            diff = (full(p.grad) - q.grad).abs().max().item()
            assert diff < TOL, f"{label}{name}: gradient differs by {diff}"
            worst = max(worst, diff)
        opt.step()
        ref_opt.step()
        opt.zero_grad()
        ref_opt.zero_grad()
    return worst

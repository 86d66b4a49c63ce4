"""AdamW whose step is one Triton kernel launch over all tensors of a parameter group.

Why: in the VLM step of ``bench/gpu_step.py`` (Qwen2-1.5B trainable, bf16) torch's fused AdamW
moves 21.7 GB per step at about 2.3 TB/s on an H100, 9.6 ms of a ~140 ms step. Its
multi-tensor launcher splits the 342 tensors into many launches of fixed 65,536-element
chunks. One launch whose programs each own 4,096 contiguous elements of one tensor ran the
same update at 2.96 TB/s, against 2.23 for torch's (bench/adamw_kernel.py; docs/BENCHMARKS.md,
issue 5).

The update is torch's AdamW, operation for operation (fp32 arithmetic, values stored back in
each tensor's own dtype): ``p -= lr·wd·p``; ``m = β1·m + (1-β1)·g``; ``v = β2·v + (1-β2)·g²``;
``p -= (lr / (1-β1^t)) · m / (sqrt(v) / sqrt(1-β2^t) + eps)``. The state has torch's layout
(``step`` as a float32 tensor on the device, ``exp_avg``, ``exp_avg_sq``), so checkpoints load
in either optimizer. The step never reads the device on the host, and a CUDA graph may capture
it (runtime/graph_step.py); a learning rate that changes between replays must then be a
0-dim CUDA tensor.

The kernel's tables (which tensor and offset each program updates, and the tensors'
addresses) are built on the host and kept while the parameters and gradients keep their
addresses: gradients re-allocated at the same addresses (the caching allocator's usual case)
cost no rebuild.
"""

from __future__ import annotations

import functools
import math

import torch

from amylum.triton_support import interpreting as _interpreting
from amylum.triton_support import triton_available

# Elements per program and warps per program: 4,096 × 8 ran at 2.96 TB/s on an H100, 8,192 × 16
# at 2.64 (bench/adamw_kernel.py, session 6; a bf16 copy of the same elements ran at 3.01).
BLOCK = 4096
NUM_WARPS = 8


@functools.cache
def _kernel():
    """The Triton kernel, defined on first use (importing this module must not need Triton) and
    then kept: a new definition at every step cost 7 ms of host time per step (its source is
    parsed and hashed again)."""
    import triton
    import triton.language as tl

    @triton.jit
    # (Argument names must not clash with the names of Triton's generated launcher, e.g. "params".)
    def adamw_kernel(chunk_tensor, chunk_start, param_addr, grad_addr, exp_avg_addr, exp_avg_sq_addr, step_addr,
                     numels, lr_ptr, lr_value, beta1, beta2, log2_beta1, log2_beta2, eps, weight_decay,
                     LR_FROM_PTR: tl.constexpr, P_DTYPE: tl.constexpr, G_DTYPE: tl.constexpr,
                     S_DTYPE: tl.constexpr, BLOCK: tl.constexpr, ALIGNED: tl.constexpr):
        pid = tl.program_id(0)
        t = tl.load(chunk_tensor + pid)
        offs = tl.load(chunk_start + pid) + tl.arange(0, BLOCK)
        mask = offs < tl.load(numels + t)
        p_ptrs = tl.load(param_addr + t).to(tl.pointer_type(P_DTYPE)) + offs
        g_ptrs = tl.load(grad_addr + t).to(tl.pointer_type(G_DTYPE)) + offs
        m_ptrs = tl.load(exp_avg_addr + t).to(tl.pointer_type(S_DTYPE)) + offs
        v_ptrs = tl.load(exp_avg_sq_addr + t).to(tl.pointer_type(S_DTYPE)) + offs
        if ALIGNED:
            # Addresses come from a table, so Triton cannot see their alignment, and the element
            # count from memory, so neither can it see the mask's: without these hints every
            # access is a scalar one (2.3x slower on an H100). The host puts a tensor here only if
            # all four addresses are 16-byte aligned and its element count is a multiple of 16,
            # so the mask is constant over every 16 elements (the compiled PTX then uses v4 loads).
            mask = tl.max_constancy(mask, [16])
            p_ptrs = tl.max_contiguous(tl.multiple_of(p_ptrs, [16]), [BLOCK])
            g_ptrs = tl.max_contiguous(tl.multiple_of(g_ptrs, [16]), [BLOCK])
            m_ptrs = tl.max_contiguous(tl.multiple_of(m_ptrs, [16]), [BLOCK])
            v_ptrs = tl.max_contiguous(tl.multiple_of(v_ptrs, [16]), [BLOCK])
        step = tl.load(tl.load(step_addr + t).to(tl.pointer_type(tl.float32)))
        if LR_FROM_PTR:
            lr = tl.load(lr_ptr).to(tl.float32)
        else:
            lr = lr_value
        p = tl.load(p_ptrs, mask=mask).to(tl.float32)
        g = tl.load(g_ptrs, mask=mask).to(tl.float32)
        m = tl.load(m_ptrs, mask=mask).to(tl.float32)
        v = tl.load(v_ptrs, mask=mask).to(tl.float32)
        p = p - lr * weight_decay * p
        m = beta1 * m + (1.0 - beta1) * g
        v = beta2 * v + (1.0 - beta2) * g * g
        bias_correction1 = 1.0 - tl.exp2(step * log2_beta1)
        bias_correction2_sqrt = tl.sqrt(1.0 - tl.exp2(step * log2_beta2))
        denom = tl.sqrt(v) / bias_correction2_sqrt + eps
        p = p - (lr / bias_correction1) * m / denom
        tl.store(p_ptrs, p.to(P_DTYPE), mask=mask)
        tl.store(m_ptrs, m.to(S_DTYPE), mask=mask)
        tl.store(v_ptrs, v.to(S_DTYPE), mask=mask)

    return adamw_kernel


def _triton_dtype(dtype: torch.dtype):
    import triton.language as tl

    table = {torch.float32: tl.float32, torch.bfloat16: tl.bfloat16, torch.float16: tl.float16}
    if dtype not in table:
        raise TypeError(f"TritonAdamW supports float32, bfloat16 and float16 tensors, not {dtype}")
    return table[dtype]


class _Tables:
    """Device tables of one launch: per program (tensor index, first element); per tensor the
    addresses of param, grad, exp_avg, exp_avg_sq and step, and the element count.

    The host copy stays alive with the tables: built during a CUDA graph capture, the copy to the
    device is part of the graph, which reads this same host buffer at every replay."""

    def __init__(self, key: tuple, numels: list[int], device: torch.device) -> None:
        per_tensor = [-(-n // BLOCK) for n in numels]
        tensor_of_chunk = torch.repeat_interleave(torch.arange(len(numels)), torch.tensor(per_tensor))
        first_chunk = torch.tensor([0] + per_tensor[:-1]).cumsum(0)
        start = (torch.arange(len(tensor_of_chunk)) - first_chunk[tensor_of_chunk]) * BLOCK
        self.key = key
        host = torch.cat([torch.tensor([numels, *key], dtype=torch.int64).reshape(-1), tensor_of_chunk, start])
        if device.type == "cuda":
            host = host.pin_memory()
        self._host = host
        tables = host.to(device, non_blocking=True)
        n = len(numels)
        self.numels, self.params, self.grads, self.exp_avgs, self.exp_avg_sqs, self.steps = tables[: 6 * n].view(6, n)
        self.chunk_tensor = tables[6 * n : 6 * n + len(tensor_of_chunk)]
        self.chunk_start = tables[6 * n + len(tensor_of_chunk) :]
        self.programs = len(tensor_of_chunk)


def aligned(tensors: tuple) -> bool:
    """All four tensors of one parameter 16-byte aligned, with a multiple of 16 elements."""
    p, g, m, v = tensors[:4]
    return p.numel() % 16 == 0 and all(t.data_ptr() % 16 == 0 for t in (p, g, m, v))


def adamw_update(tensors: tuple[list, list, list, list, list], *, lr, beta1: float, beta2: float, eps: float,
                 weight_decay: float, tables: _Tables | None = None, is_aligned: bool = False) -> _Tables:
    """One AdamW update of (params, grads, exp_avgs, exp_avg_sqs, steps) (steps already advanced),
    as one launch; returns the tables it used. Pass them back only while every tensor keeps its
    address (the caller checks: reading 1,700 addresses costs more host time than the launch).
    Tensors of one call share their dtypes (params, grads, states). ``is_aligned``: every
    parameter's tensors pass :func:`aligned` (the kernel then uses 16-byte accesses)."""
    params, grads, exp_avgs, exp_avg_sqs, steps = tensors
    if tables is None:
        key = tuple(tuple(t.data_ptr() for t in ts) for ts in tensors)
        tables = _Tables(key, [p.numel() for p in params], params[0].device)
    lr_from_ptr = isinstance(lr, torch.Tensor)
    _kernel()[(tables.programs,)](
        tables.chunk_tensor, tables.chunk_start, tables.params, tables.grads, tables.exp_avgs,
        tables.exp_avg_sqs, tables.steps, tables.numels,
        lr if lr_from_ptr else tables.numels, 0.0 if lr_from_ptr else float(lr),
        float(beta1), float(beta2), math.log2(beta1), math.log2(beta2), float(eps), float(weight_decay),
        LR_FROM_PTR=lr_from_ptr, P_DTYPE=_triton_dtype(params[0].dtype), G_DTYPE=_triton_dtype(grads[0].dtype),
        S_DTYPE=_triton_dtype(exp_avgs[0].dtype), BLOCK=BLOCK, ALIGNED=is_aligned, num_warps=NUM_WARPS,
    )
    return tables


class TritonAdamW(torch.optim.AdamW):
    """``torch.optim.AdamW`` (same arguments, same state) with its step as one Triton launch per
    parameter group and dtype combination. CUDA tensors only; no amsgrad, maximize or sparse
    gradients. The optimizer is always capturable (its step counts live on the device)."""

    def __init__(self, params, lr: float | torch.Tensor = 1e-3, betas=(0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 1e-2, *, amsgrad: bool = False, maximize: bool = False) -> None:
        if amsgrad or maximize:
            raise ValueError("TritonAdamW supports neither amsgrad nor maximize; use torch.optim.AdamW")
        if not triton_available():
            raise RuntimeError("TritonAdamW needs the triton package (it ships with CUDA builds of torch)")
        super().__init__(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, capturable=True)
        # Per group: the (param, grad) addresses it was made for, and per launch its tensors and
        # tables. A step whose addresses match (the caching allocator hands gradients the same
        # memory each step) reuses it: its host work is then one address read per tensor.
        self._plans: dict[int, tuple] = {}

    def load_state_dict(self, state_dict) -> None:
        super().load_state_dict(state_dict)
        self._plans.clear()  # new state tensors, new addresses

    def _group_tensors(self, group):
        """Parameters with gradients, their states (created as torch's AdamW creates them), by dtypes
        and alignment (one launch each)."""
        by_dtypes: dict[tuple, list] = {}
        for p in group["params"]:
            if p.grad is None:
                continue
            if not (p.is_cuda or _interpreting()) or p.grad.is_sparse or p.is_complex():
                raise ValueError(
                    f"TritonAdamW updates dense real CUDA tensors only; got a parameter on {p.device} "
                    f"(sparse grad: {p.grad.is_sparse}, complex: {p.is_complex()})")
            state = self.state[p]
            if not state:
                state["step"] = torch.zeros((), dtype=torch.float32, device=p.device)
                state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            for name in ("exp_avg", "exp_avg_sq"):
                if not state[name].is_contiguous() or state[name].dtype != state["exp_avg"].dtype:
                    raise ValueError("TritonAdamW needs contiguous optimizer states of one dtype per parameter")
            if not p.is_contiguous() or not p.grad.is_contiguous():
                raise ValueError("TritonAdamW needs contiguous parameters and gradients")
            key = (p.dtype, p.grad.dtype, state["exp_avg"].dtype,
                   aligned((p, p.grad, state["exp_avg"], state["exp_avg_sq"])))
            entry = by_dtypes.setdefault(key, ([], [], [], [], []))
            for lst, t in zip(entry, (p, p.grad, state["exp_avg"], state["exp_avg_sq"], state["step"])):
                lst.append(t)
        return by_dtypes

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for gi, group in enumerate(self.param_groups):
            key = tuple((p.data_ptr(), p.grad.data_ptr()) if p.grad is not None else None for p in group["params"])
            plan = self._plans.get(gi)
            if plan is None or plan[0] != key:
                # The plan keeps no gradient: holding one would keep its memory alive after
                # zero_grad(set_to_none=True) (3 GB more peak memory for Qwen2-1.5B, seen on an H100).
                launches = {dtypes: [(params, exp_avgs, exp_avg_sqs, steps), None]
                            for dtypes, (params, _, exp_avgs, exp_avg_sqs, steps) in self._group_tensors(group).items()}
                plan = (key, launches)
                self._plans[gi] = plan
            beta1, beta2 = group["betas"]
            for dtypes, entry in plan[1].items():
                (params, exp_avgs, exp_avg_sqs, steps), tables = entry
                torch._foreach_add_(steps, 1.0)
                entry[1] = adamw_update(
                    (params, [p.grad for p in params], exp_avgs, exp_avg_sqs, steps), lr=group["lr"], beta1=beta1,
                    beta2=beta2, eps=group["eps"], weight_decay=group["weight_decay"], tables=tables,
                    is_aligned=dtypes[3])
        return loss

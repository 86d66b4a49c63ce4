"""TritonAdamW's kernel against torch's AdamW: on a GPU (the optimizer itself), and on a CPU
through Triton's interpreter (TRITON_INTERPRET=1) when triton is installed."""

import os

import pytest
import torch

from amylum.runtime.adamw_triton import BLOCK, adamw_update, aligned, triton_available

needs_triton = pytest.mark.skipif(not triton_available(), reason="needs triton")


def _tensors(seed, shapes, dtype, device):
    g = torch.Generator().manual_seed(seed)
    params = [torch.randn(s, generator=g).to(dtype).to(device) for s in shapes]
    grads = [torch.randn(s, generator=g).to(dtype).to(device) for s in shapes]
    return params, grads


SHAPES = [(3,), (BLOCK + 5,), (17, 33), (2 * BLOCK,)]  # partial, straddling and exact blocks


def _reference(params, grads, steps, lr, wd, fused):
    ps = [torch.nn.Parameter(p.clone()) for p in params]
    opt = torch.optim.AdamW(ps, lr=lr, weight_decay=wd, betas=(0.9, 0.95), eps=1e-8,
                            **({"fused": True} if fused else {"foreach": False}))
    for _ in range(steps):
        for p, g in zip(ps, grads):
            p.grad = g.clone()
        opt.step()
    return [p.detach() for p in ps], [opt.state[p]["exp_avg"] for p in ps], [opt.state[p]["exp_avg_sq"] for p in ps]


@needs_triton
@pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") != "1", reason="CPU run of the kernel needs TRITON_INTERPRET=1")
def test_kernel_matches_torch_adamw_in_the_interpreter():
    params, grads = _tensors(0, SHAPES, torch.float32, "cpu")
    expected, m_ref, v_ref = _reference(params, grads, 3, 1e-2, 0.1, fused=False)
    ps = [p.clone() for p in params]
    ms, vs = [torch.zeros_like(p) for p in ps], [torch.zeros_like(p) for p in ps]
    steps = [torch.zeros((), dtype=torch.float32) for _ in ps]
    groups = {a: [i for i in range(len(ps)) if aligned((ps[i], grads[i], ms[i], vs[i])) == a] for a in (False, True)}
    assert groups[False] and groups[True]  # both kernels run: the plain one and the 16-byte one
    tables = {}
    for _ in range(3):
        for s in steps:
            s += 1
        for is_aligned in (False, True):
            pick = lambda ts: [ts[i] for i in groups[is_aligned]]  # noqa: E731
            tables[is_aligned] = adamw_update(
                (pick(ps), pick(grads), pick(ms), pick(vs), pick(steps)), lr=1e-2, beta1=0.9, beta2=0.95, eps=1e-8,
                weight_decay=0.1, tables=tables.get(is_aligned), is_aligned=is_aligned)
    for got, want in zip(ps + ms + vs, expected + m_ref + v_ref):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("lr_tensor", [False, True])
def test_optimizer_matches_torch_fused_adamw_on_gpu(dtype, lr_tensor):
    from amylum.runtime.adamw_triton import TritonAdamW

    params, grads = _tensors(1, SHAPES, dtype, "cuda")
    expected, m_ref, v_ref = _reference(params, grads, 4, 1e-2, 0.1, fused=True)
    ps = [torch.nn.Parameter(p.clone()) for p in params]
    lr = torch.tensor(1e-2, device="cuda") if lr_tensor else 1e-2
    opt = TritonAdamW(ps, lr=lr, weight_decay=0.1, betas=(0.9, 0.95), eps=1e-8)
    for _ in range(4):
        for p, g in zip(ps, grads):
            p.grad = g.clone()
        opt.step()
    # bf16: the same fp32 arithmetic, but exp2/log2 bias corrections may round one value to the
    # neighbouring bf16 number (one ulp, 2^-8 relative).
    tol = {"rtol": 1e-5, "atol": 1e-6} if dtype == torch.float32 else {"rtol": 2 ** -7, "atol": 1e-5}
    for p, want, m_want, v_want in zip(ps, expected, m_ref, v_ref):
        torch.testing.assert_close(p.detach(), want, **tol)
        torch.testing.assert_close(opt.state[p]["exp_avg"], m_want, **tol)
        torch.testing.assert_close(opt.state[p]["exp_avg_sq"], v_want, **tol)
        assert opt.state[p]["step"].item() == 4


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_optimizer_steps_inside_a_cuda_graph():
    from amylum.runtime.adamw_triton import TritonAdamW

    params, grads = _tensors(2, SHAPES, torch.float32, "cuda")
    expected, _, _ = _reference(params, grads, 5, 1e-2, 0.0, fused=True)
    ps = [torch.nn.Parameter(p.clone()) for p in params]
    opt = TritonAdamW(ps, lr=torch.tensor(1e-2, device="cuda"), weight_decay=0.0, betas=(0.9, 0.95))
    static_grads = [g.clone() for g in grads]
    for p, g in zip(ps, static_grads):
        p.grad = g
    opt.step()  # eager: state and kernel compile
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        opt.step()
    for _ in range(4):
        graph.replay()
    for p, want in zip(ps, expected):
        torch.testing.assert_close(p.detach(), want, rtol=1e-5, atol=1e-6)


def test_unsupported_options_are_refused():
    from amylum.runtime.adamw_triton import TritonAdamW

    p = [torch.nn.Parameter(torch.zeros(2))]
    with pytest.raises((ValueError, RuntimeError), match="amsgrad|triton"):
        TritonAdamW(p, amsgrad=True)


def test_the_trainer_takes_it_only_on_a_gpu():
    from amylum.config import ConfigError, TrainingConfig, load_config
    from amylum.runtime.optim import build_optimizer

    with pytest.raises(ConfigError, match="adamw_kernel"):
        load_config(None, ["--training.adamw_kernel=triton", "--job.device=cpu"])
    with pytest.raises(ConfigError, match="adamw_kernel"):
        load_config(None, ["--training.adamw_kernel=fast"])
    model = torch.nn.Linear(2, 2)
    with pytest.raises(ValueError, match="CUDA devices only"):
        build_optimizer(model, TrainingConfig(adamw_kernel="triton"), torch.device("cpu"))


@needs_triton
@pytest.mark.skipif(not torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1",
                    reason="needs CUDA, or Triton's interpreter")
def test_the_optimizer_keeps_no_gradient_alive():
    import weakref

    from amylum.runtime.adamw_triton import TritonAdamW

    params, grads = _tensors(3, SHAPES, torch.float32, "cuda" if torch.cuda.is_available() else "cpu")
    ps = [torch.nn.Parameter(p) for p in params]
    opt = TritonAdamW(ps, lr=1e-3)
    for p, g in zip(ps, grads):
        p.grad = g.clone()
    opt.step()
    watched = weakref.ref(ps[1].grad)
    opt.zero_grad(set_to_none=True)
    assert watched() is None


@needs_triton
@pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") != "1", reason="CPU run of the kernel needs TRITON_INTERPRET=1")
def test_the_optimizer_follows_new_gradients_in_the_interpreter():
    """Gradients re-made every step (new tensors, maybe new addresses): the kept launch plan is
    used only while the addresses match, and the result is torch's AdamW."""
    from amylum.runtime.adamw_triton import TritonAdamW

    params, grads = _tensors(4, SHAPES, torch.float32, "cpu")
    expected, _, _ = _reference(params, grads, 3, 1e-2, 0.1, fused=False)
    ps = [torch.nn.Parameter(p.clone()) for p in params]
    opt = TritonAdamW(ps, lr=1e-2, weight_decay=0.1, betas=(0.9, 0.95))
    keep = []
    for step in range(3):
        for p, g in zip(ps, grads):
            p.grad = g.clone()
        keep.append([p.grad for p in ps][:1] if step == 1 else [])  # a held gradient forces new addresses
        opt.step()
        opt.zero_grad(set_to_none=True)
    for p, want in zip(ps, expected):
        torch.testing.assert_close(p.detach(), want, rtol=1e-5, atol=1e-6)

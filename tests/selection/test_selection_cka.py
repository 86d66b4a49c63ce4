"""CKA: invariances, identity, a hand-computed case, streaming = full, minibatch ≈ full."""

import math

import pytest
import torch

from amylum.selection.cka import MinibatchCKA, StreamingLinearCKA, cka_from_grams, hsic, linear_cka, pairwise_cka


def _data(n=64, p=12, q=7, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, p, generator=g, dtype=torch.float64)
    y = x[:, :q] @ torch.randn(q, q, generator=g, dtype=torch.float64) + 0.5 * torch.randn(n, q, generator=g, dtype=torch.float64)
    return x, y


def test_identity_is_one():
    x, _ = _data()
    assert linear_cka(x, x) == pytest.approx(1.0, abs=1e-12)
    assert linear_cka(x, x, unbiased=True) == pytest.approx(1.0, abs=1e-12)


def test_invariant_to_orthogonal_transform_and_isotropic_scaling():
    x, y = _data()
    q, _ = torch.linalg.qr(torch.randn(12, 12, generator=torch.Generator().manual_seed(3), dtype=torch.float64))
    base = linear_cka(x, y)
    assert linear_cka(x @ q, y) == pytest.approx(base, abs=1e-10)
    assert linear_cka(3.7 * x, 0.2 * y) == pytest.approx(base, abs=1e-10)
    assert linear_cka(x @ q * 5, y, unbiased=True) == pytest.approx(linear_cka(x, y, unbiased=True), abs=1e-10)


def test_not_invariant_to_anisotropic_scaling():
    x, y = _data()
    assert abs(linear_cka(x * torch.linspace(0.1, 10, 12, dtype=torch.float64), y) - linear_cka(x, y)) > 1e-3


def test_hand_computed_case():
    # x = [0,1,2,3], y = [0,1,0,1] (1-D): linear CKA = corr(x, y)² = (2/√20)² / (1/... ) = 0.2.
    x = torch.tensor([[0.0], [1.0], [2.0], [3.0]])
    y = torch.tensor([[0.0], [1.0], [0.0], [1.0]])
    # centred x = [-1.5,-.5,.5,1.5], y = [-.5,.5,-.5,.5]: <x,y> = 1, |x|² = 5, |y|² = 1 → 1²/(5·1) = 0.2
    assert linear_cka(x, y) == pytest.approx(0.2, abs=1e-12)
    assert cka_from_grams(x @ x.T, y @ y.T) == pytest.approx(0.2, abs=1e-12)


def test_feature_space_equals_gram_form():
    x, y = _data()
    assert linear_cka(x, y) == pytest.approx(cka_from_grams(x @ x.T, y @ y.T), abs=1e-10)


def test_streaming_is_exact():
    x, y = _data(n=100)
    acc = StreamingLinearCKA()
    for s in range(0, 100, 17):
        acc.update(x[s:s + 17], y[s:s + 17])
    assert acc.value() == pytest.approx(linear_cka(x, y), abs=1e-10)


def test_minibatch_close_to_full_unbiased():
    x, y = _data(n=1024, seed=5)
    acc = MinibatchCKA()
    for s in range(0, 1024, 128):
        acc.update(x[s:s + 128], y[s:s + 128])
    assert acc.value() == pytest.approx(linear_cka(x, y, unbiased=True), abs=0.03)
    names, sim = pairwise_cka({"a": x, "b": y}, batch_size=128)
    assert sim[0, 1] == pytest.approx(acc.value(), abs=1e-12) and names == ["a", "b"]


def test_unbiased_hsic_of_independent_data_is_near_zero():
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(400, 5, generator=g), torch.randn(400, 5, generator=g)
    biased, unbiased = hsic(x @ x.T, y @ y.T), hsic(x @ x.T, y @ y.T, unbiased=True)
    assert abs(float(unbiased)) < abs(float(biased))


def test_errors_are_clear():
    with pytest.raises(ValueError, match="same inputs"):
        linear_cka(torch.randn(5, 2), torch.randn(6, 2))
    with pytest.raises(ValueError, match="constant"):
        linear_cka(torch.ones(5, 2), torch.randn(5, 2))
    assert math.isfinite(linear_cka(torch.randn(5, 2), torch.randn(5, 3)))

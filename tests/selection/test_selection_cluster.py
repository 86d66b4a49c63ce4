"""Hierarchical clustering on constructed similarity matrices and representations."""

import pytest
import torch

from amylum.selection.cka import pairwise_cka
from amylum.selection.cluster import cluster_by_similarity

SIM = torch.tensor([
    [1.00, 0.95, 0.50, 0.40],
    [0.95, 1.00, 0.45, 0.42],
    [0.50, 0.45, 1.00, 0.75],
    [0.40, 0.42, 0.75, 1.00],
])
NAMES = ["a", "a2", "b", "c"]


def test_similarity_threshold():
    assert cluster_by_similarity(NAMES, SIM, 0.9).clusters == [["a", "a2"], ["b"], ["c"]]
    assert cluster_by_similarity(NAMES, SIM, 0.7).clusters == [["a", "a2"], ["b", "c"]]
    assert cluster_by_similarity(NAMES, SIM, 0.3).clusters == [NAMES]
    assert cluster_by_similarity(NAMES, SIM, 1.0).clusters == [[n] for n in NAMES]


def test_distance_threshold_is_the_complement():
    assert cluster_by_similarity(NAMES, SIM, 0.3, kind="distance").clusters == [["a", "a2"], ["b", "c"]]


def test_medoid_and_lookup():
    c = cluster_by_similarity(["x", "y", "z"], torch.tensor([[1, .9, .8], [.9, 1, .95], [.8, .95, 1]]), 0.7)
    assert c.clusters == [["x", "y", "z"]] and c.medoids == ["y"]
    assert c.cluster_of("z") == 0


def test_clusters_constructed_representations():
    g = torch.Generator().manual_seed(0)
    base1, base2 = torch.randn(200, 16, generator=g), torch.randn(200, 16, generator=g)
    q, _ = torch.linalg.qr(torch.randn(16, 16, generator=g))
    feats = {
        "m1": base1, "m1-rotated": 2 * base1 @ q, "m1-noisy": base1 + 0.3 * torch.randn(200, 16, generator=g),
        "m2": base2, "m2-wider": torch.cat([base2, 0.1 * torch.randn(200, 8, generator=g)], 1),
    }
    names, sim = pairwise_cka(feats)
    c = cluster_by_similarity(names, sim, 0.7)
    assert sorted(map(sorted, c.clusters)) == [["m1", "m1-noisy", "m1-rotated"], ["m2", "m2-wider"]]


def test_bad_inputs():
    with pytest.raises(ValueError, match="4 × 4"):
        cluster_by_similarity(NAMES, SIM[:3, :3], 0.5)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        cluster_by_similarity(NAMES, SIM, 1.5)
    assert cluster_by_similarity(["solo"], torch.ones(1, 1), 0.7).clusters == [["solo"]]

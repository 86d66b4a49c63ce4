"""BalancedBatchSampler: coverage, determinism, resume mid-epoch, single device and DP ranks."""

import itertools

import numpy as np
import pytest

from amylum.data.balanced_sampler import BalancedBatchSampler
from amylum.planner.workload import WorkTable


def table(n=300, seed=0):
    rng = np.random.default_rng(seed)
    imgs = rng.choice(5, n, p=[.3, .4, .15, .1, .05])
    L = np.clip(np.exp(rng.normal(5.5, 1, n)), 32, 2048) + imgs * 64
    return WorkTable.from_arrays(imgs[:, None] * 1e-3, 1e-4 * L + 1e-8 * L * L, L, ("vision",))


def epoch_of(s):
    return [list(mbatch) for mbatch in itertools.islice(iter(s), len(s))]


@pytest.mark.parametrize("policy", ["hierarchical", "random", "lpt"])
def test_each_iteration_is_a_partition_of_its_global_batch(policy):
    t = table()
    ranks = [BalancedBatchSampler(t, 64, 4, replicas=2, rank=r, policy=policy, seed=1) for r in range(2)]
    order = ranks[0].order(0)
    its = [list(r.iterations()) for r in ranks]
    assert len(its[0]) == 300 // 64
    seen = []
    for k in range(len(its[0])):
        got = sorted(i for r in range(2) for mbatch in its[r][k] for i in mbatch)
        assert got == sorted(order[k * 64:(k + 1) * 64].tolist())  # same samples, same iteration
        assert all(len(mbatch) > 0 for r in range(2) for mbatch in its[r][k])
        seen += got
    assert len(seen) == len(set(seen))


def test_deterministic_for_a_seed_and_different_across_seeds_and_epochs():
    t = table()
    a = epoch_of(BalancedBatchSampler(t, 60, 3, seed=7))
    b = epoch_of(BalancedBatchSampler(t, 60, 3, seed=7))
    c = epoch_of(BalancedBatchSampler(t, 60, 3, seed=8))
    assert a == b and a != c
    s = BalancedBatchSampler(t, 60, 3, seed=7)
    e0, e1 = epoch_of(s), epoch_of(s)
    assert e0 == a and e1 != e0 and s.epoch == 2


def test_single_device_yields_microbatches_in_order():
    t = table()
    s = BalancedBatchSampler(t, 60, 3)
    mbs = epoch_of(s)
    assert len(mbs) == len(s) == (300 // 60) * 3
    assert mbs[:3] == s.plan(0, 0)[0]


@pytest.mark.parametrize("stop", [1, 4, 5, 9, 15])
def test_resume_mid_epoch_gives_the_same_sequence(stop):
    t = table()
    ref = BalancedBatchSampler(t, 60, 3, replicas=2, rank=1, seed=3)
    full = list(ref) + list(ref)  # two epochs
    s = BalancedBatchSampler(t, 60, 3, replicas=2, rank=1, seed=3)
    it = iter(s)
    head = list(itertools.islice(it, stop))
    state = s.state_dict()
    fresh = BalancedBatchSampler(t, 60, 3, replicas=2, rank=1, seed=0)
    fresh.load_state_dict(state)
    tail = list(fresh)
    tail += list(fresh) if len(head) + len(tail) < len(full) else []
    assert head + tail == full


def test_iterations_resume_at_next_whole_iteration():
    t = table()
    s = BalancedBatchSampler(t, 60, 3, seed=3)
    it = iter(s)
    next(it)
    r = BalancedBatchSampler(t, 60, 3, seed=3)
    r.load_state_dict(s.state_dict())
    first = next(r.iterations())
    assert first == s.plan(0, 1)[0]


def test_bad_arguments_and_state():
    t = table()
    with pytest.raises(ValueError, match="empty"):
        BalancedBatchSampler(t, 5, 3, replicas=2)
    with pytest.raises(ValueError, match="rank"):
        BalancedBatchSampler(t, 60, 3, replicas=2, rank=2)
    with pytest.raises(ValueError, match="exceeds"):
        BalancedBatchSampler(t, 600, 3)
    s = BalancedBatchSampler(t, 60, 3)
    with pytest.raises(ValueError, match="lacks"):
        s.load_state_dict({"epoch": 0})
    with pytest.raises(ValueError, match="outside"):
        s.load_state_dict({"epoch": 0, "iteration": 0, "microbatch": 9, "seed": 0})
    with pytest.raises(ValueError, match="unknown microbatch policy"):
        BalancedBatchSampler(t, 60, 3, policy="nope")


def test_plugs_into_a_torch_dataloader():
    torch = pytest.importorskip("torch")
    t = table(120)
    s = BalancedBatchSampler(t, 40, 2, seed=1)
    ds = list(range(120))
    dl = torch.utils.data.DataLoader(ds, batch_sampler=s, collate_fn=list)
    got = list(dl)
    assert got == epoch_of(BalancedBatchSampler(t, 40, 2, seed=1))

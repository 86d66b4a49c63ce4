"""ResumableLoader with balance set: per-sample work from records, replica shares, resume."""

import itertools

import numpy as np
import pytest
from data_helpers import rec, write_jsonl

from amylum.data.balanced_sampler import BalancedBatchSampler
from amylum.data.dataset import MultimodalDataset, ResumableLoader
from amylum.data.errors import DataError
from amylum.planner.workload import WorkCoefficients

COEF = WorkCoefficients({"vision": 1.0, "audio": 2.0}, {"vision": 0.01, "audio": 0.02}, llm_per_token=1e-3,
                        llm_per_mask_entry=1e-6)


def _records(n=30):
    out = []
    for i in range(n):
        if i % 5 == 0:
            out.append(rec(f"r{i}", human="<image>\n<image>\nSum?", answer="3", images=["a.png", "b.png"]))
        elif i % 5 in (1, 2):
            out.append(rec(f"r{i}", image="a.png"))
        elif i % 5 == 3:
            wav = "long.wav" if i % 2 else "short.wav"
            out.append(rec(f"r{i}", human="<audio>\nWhich digit?", answer="1", audio=wav))
        else:
            out.append(rec(f"r{i}", human="What is 3 plus 4? " * (1 + i % 4), answer="7"))
    return out


@pytest.fixture
def dataset(make_processor, media):
    return MultimodalDataset(write_jsonl(media / "recs.jsonl", _records()), make_processor())


def _ids(batches):
    return [[r for row in b.records for r in row] for b in batches]


def test_work_from_record_metadata(dataset, audio_spec, image_spec):
    w = dataset.work_table(COEF)
    assert w.modalities == ("vision", "audio") and len(w) == len(dataset)
    vision, audio = w.encoder[:, 0], w.encoder[:, 1]
    two_images, one_image = vision[0], vision[1]
    assert two_images == pytest.approx(2 * one_image)
    assert one_image == pytest.approx(1.0 + 0.01 * image_spec.num_tokens())
    # audio length from the WAV header: 0.5 s (r3) and 0.3 s (r8) clips
    assert audio[3] == pytest.approx(2.0 + 0.02 * audio_spec.num_tokens(8000))
    assert audio[8] == pytest.approx(2.0 + 0.02 * audio_spec.num_tokens(4800))
    assert (w.encoder[4] == 0).all() and w.llm[4] > 0  # text only
    assert w.llm[9] > w.llm[4]  # longer text, more LLM work


def test_audio_seconds_in_the_record_are_used_before_the_header(make_processor, media, audio_spec):
    recs = [rec("a", human="<audio>\nWhich digit?", answer="1", audio="long.wav", audio_seconds=0.2)]
    w = MultimodalDataset(write_jsonl(media / "s.jsonl", recs), make_processor()).work_table(COEF)
    assert w.encoder[0, 1] == pytest.approx(2.0 + 0.02 * audio_spec.num_tokens(3200))


def test_unreadable_audio_header_is_a_data_error_or_skipped(make_processor, media):
    recs = [rec("bad", human="<audio>\nWhich digit?", answer="1", audio="noise.wav"), rec("ok", image="a.png")]
    path = write_jsonl(media / "b.jsonl", recs)
    with pytest.raises(DataError, match="bad.*header"):
        MultimodalDataset(path, make_processor()).work_table(COEF)
    w = MultimodalDataset(path, make_processor(on_error="skip")).work_table(COEF)
    assert w.encoder[0].sum() == 0 and w.encoder[1, 0] > 0


def test_replicas_share_each_global_batch_in_the_sampler_order(dataset):
    w = dataset.work_table(COEF)
    loaders = [ResumableLoader(dataset, 3, seed=4, rank=r, world_size=2, balance="hierarchical", microbatches=2,
                               work=w) for r in range(2)]
    assert len(loaders[0]) == (30 // 12) * 2
    epochs = [_ids(list(l)) for l in loaders]
    sampler = BalancedBatchSampler(w, 12, 2, replicas=2, seed=4)
    names = [r.id for r in dataset.records]
    for it in range(30 // 12):
        plan = sampler.plan(0, it)
        for r in range(2):
            got = epochs[r][2 * it: 2 * it + 2]
            assert got == [[names[i] for i in mb] for mb in plan[r]]  # balanced order, not sorted by count
        together = sorted(x for r in range(2) for mb in epochs[r][2 * it: 2 * it + 2] for x in mb)
        assert together == sorted(names[i] for i in sampler.order(0)[12 * it: 12 * (it + 1)])
    assert loaders[0].state_dict() == {"epoch": 1, "index": 0, "seed": 4, "balance": "hierarchical"}


@pytest.mark.parametrize("stop", [1, 2, 3])
def test_resume_mid_epoch_continues_the_same_sequence(dataset, stop):
    w = dataset.work_table(COEF)

    def make(seed):
        return ResumableLoader(dataset, 2, seed=seed, balance="hierarchical", microbatches=3, work=w)

    ref = make(5)
    full = _ids(list(ref)) + _ids(list(ref))  # two epochs
    a = make(5)
    head = _ids(itertools.islice(iter(a), stop))
    state = a.state_dict()
    assert state["index"] == stop
    b = make(0)
    b.load_state_dict(state)
    assert head + _ids(list(b)) + _ids(list(b)) == full


def test_deterministic_and_different_from_plain_batches(dataset):
    w = dataset.work_table(COEF)
    a = _ids(ResumableLoader(dataset, 2, seed=1, balance="hierarchical", microbatches=3, work=w))
    b = _ids(ResumableLoader(dataset, 2, seed=1, balance="hierarchical", microbatches=3, work=w))
    plain = _ids(ResumableLoader(dataset, 2, seed=1))
    assert a == b and a != plain[: len(a)]


def test_bad_balanced_arguments_and_states(dataset):
    w = dataset.work_table(COEF)
    with pytest.raises(ValueError, match="needs work"):
        ResumableLoader(dataset, 2, balance="hierarchical", microbatches=2)
    with pytest.raises(ValueError, match="choose from"):
        ResumableLoader(dataset, 2, balance="sorted", work=w)
    with pytest.raises(ValueError, match="exceeds"):
        ResumableLoader(dataset, 4, balance="hierarchical", microbatches=4, world_size=2, work=w)
    with pytest.raises(ValueError, match="rows"):
        ResumableLoader(dataset, 2, balance="hierarchical", work=w.take(np.arange(5)))
    with pytest.raises(ValueError, match="apply only with balance"):
        ResumableLoader(dataset, 2, microbatches=2)
    balanced = ResumableLoader(dataset, 2, balance="hierarchical", microbatches=3, work=w)
    plain = ResumableLoader(dataset, 2)
    with pytest.raises(ValueError, match="same data.balance"):
        balanced.load_state_dict(plain.state_dict())
    with pytest.raises(ValueError, match="same data.balance"):
        plain.load_state_dict(balanced.state_dict())
    with pytest.raises(ValueError, match="outside"):
        balanced.load_state_dict({"epoch": 0, "index": 99, "seed": 0, "balance": "hierarchical"})


def test_a_pipeline_load_profile_reaches_the_sampler(dataset):
    w = dataset.work_table(COEF)
    profile = np.array([0.4, 1.6])  # a light first microbatch, as a pipeline's fill wants
    shaped = ResumableLoader(dataset, 4, seed=2, balance="hierarchical", microbatches=2, work=w, profile=profile)
    names = {r.id: i for i, r in enumerate(dataset.records)}
    total = w.total
    for k, batch in enumerate(shaped):
        work = total[[names[r] for row in batch.records for r in row]].sum()
        if k % 2 == 0:
            first = work
        else:
            assert first < work  # microbatch 0 of every iteration carries less work
    with pytest.raises(ValueError, match="takes no load profile"):
        ResumableLoader(dataset, 4, balance="lpt", microbatches=2, work=w, profile=profile)

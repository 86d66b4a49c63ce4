import pytest
import torch
from data_helpers import rec, write_jsonl

from amylum.data.dataset import MultimodalDataset, ResumableLoader


@pytest.fixture
def dataset(make_processor, media):
    recs = []
    for i in range(10):
        if i % 3 == 0:
            recs.append(rec(f"r{i}", image="a.png" if i % 2 else "b.png"))
        elif i % 3 == 1:
            recs.append(rec(f"r{i}", human="<audio>\nWhich digit?", answer=str(i), audio="short.wav"))
        else:
            recs.append(rec(f"r{i}", human=f"What is {i} plus 1?", answer=str(i + 1)))
    return MultimodalDataset(write_jsonl(media / "recs.jsonl", recs), make_processor())


def _ids(loader, n=None):
    out = []
    for k, b in enumerate(loader):
        out.append([r for row in b.records for r in row])
        if n is not None and k + 1 == n:
            break
    return out


def test_media_root_defaults_to_records_folder(dataset):
    assert dataset.media_root == dataset.path.parent
    s = dataset[0]
    assert s.encoder_inputs["vision"]["pixel_values"].shape == (1, 3, 16, 16)


def test_seeded_order_epochs_and_resume(dataset):
    a = ResumableLoader(dataset, batch_size=3, seed=7)
    epoch0 = _ids(a)
    assert len(epoch0) == len(a) == 4 and sorted(sum(epoch0, [])) == sorted(f"r{i}" for i in range(10))
    assert a.state_dict() == {"epoch": 1, "index": 0, "seed": 7}
    epoch1 = _ids(a)
    assert epoch1 != epoch0  # reshuffled per epoch
    assert _ids(ResumableLoader(dataset, batch_size=3, seed=7)) == epoch0  # same seed, same order
    assert _ids(ResumableLoader(dataset, batch_size=3, seed=8)) != epoch0

    # Stop after 2 batches, checkpoint, resume in a fresh loader: the rest of the epoch follows.
    b = ResumableLoader(dataset, batch_size=3, seed=7)
    first = _ids(b, n=2)
    state = b.state_dict()
    assert state == {"epoch": 0, "index": 6, "seed": 7}
    c = ResumableLoader(dataset, batch_size=3, seed=0)
    c.load_state_dict(state)
    assert first + _ids(c) == epoch0
    assert _ids(c) == epoch1


def test_packed_batches_and_sharding(dataset):
    packed = next(iter(ResumableLoader(dataset, batch_size=4, seed=1, pack=True, max_length=128)))
    assert packed.input_ids.shape[0] < 4 and packed.num_samples == 4
    ranks = [ResumableLoader(dataset, batch_size=2, seed=1, rank=r, world_size=2) for r in range(2)]
    shards = [sum(_ids(r), []) for r in ranks]
    assert len(shards[0]) == len(shards[1]) == 5 and not set(shards[0]) & set(shards[1])


def test_skipped_records_do_not_fill_slots(make_processor, media):
    recs = [rec("ok1", image="a.png"), rec("bad", image="gone.png"), rec("ok2", image="b.png")]
    ds = MultimodalDataset(write_jsonl(media / "r.jsonl", recs), make_processor(on_error="skip"))
    batches = list(ResumableLoader(ds, batch_size=2, shuffle=False))
    assert [b.records for b in batches] == [[["ok1"], ["ok2"]]]
    assert ds.num_skipped == 1 and "missing_file: 1" in ds.skipped.summary()


def test_bad_state(dataset):
    with pytest.raises(ValueError, match="lacks"):
        ResumableLoader(dataset, batch_size=2).load_state_dict({"epoch": 0})
    assert isinstance(dataset, torch.utils.data.Dataset)

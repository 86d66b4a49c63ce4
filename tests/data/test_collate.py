import pytest
import torch
from data_helpers import rec

from amylum.data.batch import IGNORE_INDEX
from amylum.data.collate import pack_rows
from amylum.data.errors import DataError


@pytest.fixture
def samples(make_processor, media):
    proc = make_processor()
    recs = [
        rec("img", image="a.png"),
        rec("txt", human="What is 3 plus 4?", answer="7"),
        rec("two", human="<image>\n<image>\nWhat is the sum?", answer="12", images=["b.png", "a.png"]),
        rec("aud", human="<audio>\nWhich digit?", answer="5", audio="short.wav"),
    ]
    return proc, [proc(r, media_root=media) for r in recs]


def test_padding_one_sample_per_row(samples):
    proc, ss = samples
    b = proc.collate(ss)
    assert b.input_ids.shape == (4, max(len(s) for s in ss))
    assert b.records == [["img"], ["txt"], ["two"], ["aud"]]
    for r, s in enumerate(ss):
        n = len(s)
        assert torch.equal(b.input_ids[r, :n], s.input_ids)
        assert (b.sample_ids[r, :n] == 0).all() and (b.sample_ids[r, n:] == -1).all()
        assert (b.labels[r, n:] == IGNORE_INDEX).all() and (b.input_ids[r, n:] == proc.pad_token_id).all()
    assert b.modalities == ("vision", "audio")
    # Items row-major: img's image, then two's b.png and a.png.
    assert b.item_records["vision"] == ["img", "two", "two"]
    assert b.item_tokens == {"vision": [4, 4, 4], "audio": [8]}
    pv = b.encoder_inputs["vision"]["pixel_values"]
    assert torch.equal(pv[0], pv[2]) and pv.shape[0] == 3  # a.png twice
    assert b.num_samples == 4 and b.stats["samples"] == 4


def test_packing_restarts_positions_and_renumbers_segments(samples):
    proc, ss = samples
    total = sum(len(s) for s in ss)
    b = proc.collate(ss, pack=True, max_length=total)
    assert b.input_ids.shape == (1, total)
    assert b.records == [["img", "txt", "two", "aud"]]
    row_samples = b.sample_ids[0]
    assert row_samples.tolist() == sum(([k] * len(s) for k, s in enumerate(ss)), [])
    for k, s in enumerate(ss):
        m = row_samples == k
        assert torch.equal(b.position_ids[0, m], torch.arange(len(s)))
        assert b.labels[0, m][0] == IGNORE_INDEX  # never predict a sample's first token from the previous one
    # Segments: img → 0, two → 1, 2, aud → 3; unique in the row, in token order.
    segs = b.segment_ids[0][b.segment_ids[0] >= 0].unique_consecutive().tolist()
    assert segs == [0, 1, 2, 3]
    assert b.kinds[0][b.segment_ids[0] == 3].unique().tolist() == [2]
    assert b.num_tokens == total


def test_greedy_first_fit_rows(samples):
    proc, ss = samples
    lengths = [len(s) for s in ss]
    limit = max(lengths) + min(lengths)
    rows = pack_rows(lengths, limit)
    assert sorted(i for r in rows for i in r) == [0, 1, 2, 3]
    assert all(sum(lengths[i] for i in r) <= limit for r in rows)
    b = proc.collate(ss, pack=True, max_length=limit)
    assert b.input_ids.shape[0] == len(rows) and b.input_ids.shape[1] <= limit
    assert pack_rows([5, 5, 3, 2], 8) == [[0, 2], [1, 3]]


def test_left_padding_for_generation(make_processor, media):
    proc = make_processor(mode="generate")
    ss = [proc(rec("a", image="a.png"), media_root=media), proc(rec("b", human="Is 6 even?", answer="yes"))]
    b = proc.collate(ss, padding_side="left")
    short = min(range(2), key=lambda i: len(ss[i]))
    pad = b.input_ids.shape[1] - len(ss[short])
    assert (b.sample_ids[short, :pad] == -1).all() and (b.sample_ids[short, pad:] == 0).all()
    assert b.position_ids[short, pad] == 0
    assert torch.equal(b.input_ids[short, pad:], ss[short].input_ids)


def test_collate_rejects_too_long_and_empty(samples):
    proc, ss = samples
    with pytest.raises(DataError, match="record 'img': sample is 20 tokens, longer than max_length=10"):
        proc.collate(ss, max_length=10)
    with pytest.raises(ValueError, match="empty"):
        proc.collate([])


def test_batch_to_keeps_everything(samples):
    proc, ss = samples
    b = proc.collate(ss, pack=True, max_length=128).to("cpu")
    assert set(b.encoder_inputs) == {"vision", "audio"} and b.records

"""Mask semantics: the dense reference, the O(S) interval form and hand-checked cases."""

from types import SimpleNamespace

import pytest
import torch

from amylum.attention import dense_from_spec, dense_mask, mask_spec
from amylum.data.batch import MultimodalBatch

from .mask_cases import naive_mask, random_batch


def _grid(rows: str) -> torch.Tensor:
    """'1' = may attend; one string per query, one character per key."""
    return torch.tensor([[c == "1" for c in r.split()[0]] for r in rows.strip().splitlines()])


def _batch(sample, segment):
    return SimpleNamespace(sample_ids=torch.tensor([sample]), segment_ids=torch.tensor([segment]))


@pytest.mark.parametrize("mode", ["multimodal", "causal"])
def test_dense_and_intervals_equal_naive_loop(mode):
    g = torch.Generator().manual_seed(0)
    for trial in range(25):
        b = random_batch(g, batch=2, seq=int(torch.randint(1, 24, (1,), generator=g)))
        expected = naive_mask(b.sample_ids, b.segment_ids, mode)
        assert torch.equal(dense_mask(b, mode), expected), trial
        assert torch.equal(dense_from_spec(mask_spec(b, mode)), expected), trial


def test_multi_image_each_image_bidirectional_alone():
    # text, image 0 (2 tokens), text, image 1 (2 tokens), text
    got = dense_mask(_batch([0] * 7, [-1, 0, 0, -1, 1, 1, -1]))[0]
    expected = _grid(
        """
        1000000  text
        1110000  image 0 sees itself whole, not image 1
        1110000
        1111000  text sees earlier image 0
        1111110  image 1 sees all before it and itself whole
        1111110
        1111111
        """
    )
    assert torch.equal(got, expected)


def test_audio_and_image_segments_are_separate():
    # kinds differ (audio = 1, image = 2) but the rule only looks at segments.
    batch = MultimodalBatch(
        input_ids=torch.zeros(1, 6, dtype=torch.long),
        labels=torch.zeros(1, 6, dtype=torch.long),
        position_ids=torch.arange(6)[None],
        sample_ids=torch.zeros(1, 6, dtype=torch.long),
        segment_ids=torch.tensor([[0, 0, 0, 1, 1, -1]]),
        kinds=torch.tensor([[1, 1, 1, 2, 2, 0]]),
        modalities=("audio", "image"),
    )
    expected = _grid(
        """
        111000  audio clip
        111000
        111000
        111110  image after the clip: sees the clip and itself
        111110
        111111  text
        """
    )
    assert torch.equal(dense_mask(batch)[0], expected)
    assert torch.equal(dense_from_spec(mask_spec(batch))[0], expected)
    causal = dense_mask(batch, "causal")[0]
    assert torch.equal(causal, torch.ones(6, 6, dtype=torch.bool).tril())


def test_packed_samples_and_padding():
    # sample 0: text, image(2); sample 1: image(2), text; then one padding token
    b = _batch([0, 0, 0, 1, 1, 1, -1], [-1, 0, 0, 1, 1, -1, -1])
    expected = _grid(
        """
        1000000  text of sample 0
        1110000  image of sample 0
        1110000
        0001100  image at the start of sample 1: never sees sample 0
        0001100
        0001110
        0000001  padding: itself only (no empty softmax row)
        """
    )
    assert torch.equal(dense_mask(b)[0], expected)
    spec = mask_spec(b)
    assert torch.equal(dense_from_spec(spec)[0], expected)
    assert spec.allowed_count().tolist() == [int(expected[:6].sum())]


def test_segment_ids_of_padding_are_ignored():
    b = _batch([0, 0, -1, -1], [-1, -1, 5, 5])
    assert torch.equal(dense_mask(b)[0], torch.eye(4, dtype=torch.bool) | _grid("1000\n1100\n0000\n0000"))
    assert torch.equal(dense_from_spec(mask_spec(b))[0], dense_mask(b)[0])


def test_split_sample_or_segment_is_rejected():
    with pytest.raises(ValueError, match="sample 0 of row 0 is split"):
        mask_spec(_batch([0, 0, 1, 0], [-1, -1, -1, -1]))
    with pytest.raises(ValueError, match="segment 0 of row 0 is split"):
        mask_spec(_batch([0, 0, 0, 0], [0, -1, 0, -1]))
    with pytest.raises(ValueError, match="crosses a sample boundary"):
        mask_spec(_batch([0, 0, 1, 1], [-1, 0, 0, -1]))


def test_bad_inputs_have_clear_errors():
    with pytest.raises(TypeError, match="segment_ids"):
        mask_spec(SimpleNamespace(sample_ids=torch.zeros(1, 3)))
    with pytest.raises(ValueError, match="unknown mask mode"):
        dense_mask(_batch([0], [-1]), mode="bidirectional")


def test_no_state_carried_between_batches():
    # Cornstarch's class-level cache returned the previous batch's mask after S changed.
    a = mask_spec(_batch([0] * 4, [0, 0, -1, -1]))
    b = mask_spec(_batch([0] * 6, [-1, -1, 0, 0, 0, -1]))
    assert a.seq_len == 4 and b.seq_len == 6
    assert torch.equal(dense_from_spec(b)[0], naive_mask(b.sample_ids, b.segment_ids)[0])

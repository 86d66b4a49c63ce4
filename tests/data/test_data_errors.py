"""Every bad-input case: a clear error naming record and problem, or skip-and-count."""

import logging

import numpy as np
import pytest
from data_helpers import rec, write_jsonl

from amylum.data.dataset import MultimodalDataset
from amylum.data.errors import DataError
from amylum.data.processor import MultimodalProcessor

BAD = [
    # (record, reason, message fragment)
    (rec("missing", image="nope.png"), "missing_file", "image file .*nope.png' does not exist"),
    (rec("corrupt", image="corrupt.png"), "corrupt_image", "corrupt.png' is (corrupt|not a readable image)"),
    (rec("notimage", image="noise.wav"), "corrupt_image", "noise.wav' is not a readable image"),
    (rec("truncated", image="truncated.png"), "corrupt_image", "truncated.png' is corrupt"),
    (rec("noaudio", human="<audio>\nx", audio="gone.wav"), "missing_file", "audio file .*gone.wav' does not exist"),
    (rec("badaudio", human="<audio>\nx", audio="noise.wav"), "bad_audio", "noise.wav' is not readable audio"),
    (rec("video", human="<video>\nx", video="v.mp4"), "unknown_modality",
     "has video items but the model has no video encoder"),
    (rec("vtext", human="<video>\nWhat?"), "unknown_modality", "text has <video> but the model has no video encoder"),
    (rec("fewer", human="What digit?", image="a.png"), "placeholder_mismatch",
     "0 <image> placeholder\\(s\\) in the text but 1 vision item"),
    (rec("more", human="<image><image>", image="a.png"), "placeholder_mismatch",
     "2 <image> placeholder\\(s\\) in the text but 1 vision item"),
    (rec("reply", human="<image>", answer="<image>", image="a.png"), "placeholder_mismatch",
     "assistant reply contains"),
    ({"id": "empty", "conversations": []}, "empty_conversation", "'conversations' is empty"),
    (rec("long", human="What is 3 plus 4? " * 40), "too_long", "longer than max_length=64.*not truncated"),
    (rec("toolongclip", human="<audio>\nx", audio="two_s.wav"), "bad_audio", "longer than the encoder's 0.64 s window"),
]


@pytest.fixture
def bad_media(media):
    import soundfile as sf

    sf.write(media / "two_s.wav", np.zeros(32000, dtype=np.float32), 16000)
    png = (media / "a.png").read_bytes()
    (media / "truncated.png").write_bytes(png[: len(png) // 2])
    return media


@pytest.mark.parametrize("record, reason, match", BAD, ids=[b[0]["id"] for b in BAD])
def test_raise_names_record_and_problem(make_processor, bad_media, record, reason, match):
    proc = make_processor(max_length=64)
    with pytest.raises(DataError, match=f"record '{record['id']}': .*{match}") as e:
        proc(record, media_root=bad_media)
    assert e.value.reason == reason and e.value.record_id == record["id"]


def test_audio_record_for_vision_only_model(tokenizer, image_spec, media):
    proc = MultimodalProcessor(tokenizer, {"vision": image_spec}, max_length=64)
    msg = "record 'a': has audio items but the model has no audio encoder \\(it has: vision"
    with pytest.raises(DataError, match=msg):
        proc(rec("a", human="<audio>", audio="short.wav"), media_root=media)


def test_skip_counts_and_logs(make_processor, bad_media, caplog):
    proc = make_processor(max_length=64, on_error="skip")
    good = rec("good", image="a.png")
    with caplog.at_level(logging.WARNING, logger="amylum.data"):
        out = [proc(r, media_root=bad_media) for r, _, _ in BAD] + [proc(good, media_root=bad_media)]
    assert out[:-1] == [None] * len(BAD) and out[-1] is not None
    assert proc.skipped.count == len(BAD)
    assert sum(proc.skipped.by_reason.values()) == len(BAD)
    reasons = proc.skipped.by_reason
    assert reasons["missing_file"] == 2 and reasons["corrupt_image"] == 3 and reasons["too_long"] == 1
    assert f"{len(BAD)} bad records skipped" in proc.skipped.summary()
    assert "record 'missing'" in caplog.text and "skipping bad record" in caplog.text


def test_dataset_skip_counts_each_bad_record_once(make_processor, bad_media):
    path = write_jsonl(bad_media / "r.jsonl", [r for r, _, _ in BAD] + [rec("good", image="a.png")])
    ds = MultimodalDataset(path, make_processor(max_length=64, on_error="skip"))
    assert len(ds) == len(BAD)  # of len(BAD) + 1 records, the empty conversation is dropped when the file is read
    for _ in range(2):  # a second pass must not count again
        got = [ds[i] for i in range(len(ds))]
    assert sum(s is not None for s in got) == 1
    assert ds.num_skipped == len(BAD) and ds.skipped.count == len(BAD)


def test_dataset_raise_mode(make_processor, bad_media):
    path = write_jsonl(bad_media / "r.jsonl", [rec("good", image="a.png"), rec("missing", image="nope.png")])
    ds = MultimodalDataset(path, make_processor())
    assert ds[0] is not None
    with pytest.raises(DataError, match="record 'missing'"):
        ds[1]


def test_placeholder_not_in_tokenizer_uses_pad(tokenizer, tmp_path):
    import numpy as np

    from amylum.models.modality import TensorInputSpec

    np.save(tmp_path / "x.npy", np.ones((2, 3), dtype=np.float32))
    proc = MultimodalProcessor(tokenizer, {"x": TensorInputSpec(tokens_per_item=2)}, max_length=32)
    s = proc(rec("t", human="<input>\nWhat?", x="x.npy"), media_root=tmp_path)
    assert (s.input_ids[s.kinds == 1] == tokenizer.pad_token_id).all() and (s.kinds == 1).sum() == 2
    assert s.encoder_inputs["x"]["inputs"].shape == (1, 2, 3)
    with pytest.raises(DataError, match="record 't': input file .*gone.npy' does not exist"):
        proc(rec("t", human="<input>", x="gone.npy"), media_root=tmp_path)


def test_bad_on_error_value(tokenizer):
    with pytest.raises(ValueError, match="on_error must be"):
        MultimodalProcessor(tokenizer, {}, max_length=32, on_error="ignore")

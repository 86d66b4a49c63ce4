import torch

from amylum.data.batch import IGNORE_INDEX
from data_helpers import rec


def test_single_image_expansion_and_labels(make_processor, media, tokenizer):
    proc = make_processor()
    s = proc(rec(image="a.png"), media_root=media)
    ph = tokenizer.convert_tokens_to_ids("<image>")
    assert (s.input_ids == ph).sum() == 4  # tokens_per_item
    assert (s.kinds == 1).sum() == 4 and torch.equal(s.kinds == 1, s.input_ids == ph)
    assert torch.equal(s.segment_ids[s.kinds == 1], torch.zeros(4, dtype=torch.long))
    assert (s.segment_ids[s.kinds == 0] == -1).all()
    assert torch.equal(s.position_ids, torch.arange(len(s)))
    # Labels: only the reply "7" and <eos> carry loss; prompt and modality tokens are ignored.
    trained = s.labels != IGNORE_INDEX
    assert torch.equal(s.labels[trained], s.input_ids[trained])
    assert tokenizer.decode(s.input_ids[trained]) == "7<eos>"
    assert s.input_ids[-1] == tokenizer.eos_token_id
    assert s.labels[0] == IGNORE_INDEX and s.input_ids[0] == tokenizer.bos_token_id
    assert (s.labels[s.kinds != 0] == IGNORE_INDEX).all()
    assert s.encoder_inputs["vision"]["pixel_values"].shape == (1, 3, 16, 16)
    assert s.item_tokens == {"vision": [4]}


def test_multi_image_segments_in_order(make_processor, media):
    proc = make_processor()
    s = proc(rec(human="<image>\n<image>\nWhat is the sum?", answer="12", images=["a.png", "b.png"]), media_root=media)
    img = s.kinds == 1
    assert img.sum() == 8
    assert s.segment_ids[img].tolist() == [0] * 4 + [1] * 4
    # The two images are separated by a text token ("\n"), so they are two runs.
    first = int(img.nonzero()[0])
    assert s.kinds[first + 4] == 0
    pv = s.encoder_inputs["vision"]["pixel_values"]
    assert pv.shape == (2, 3, 16, 16) and not torch.equal(pv[0], pv[1])


def test_audio_variable_length_and_mixed_segments(make_processor, media, audio_spec):
    proc = make_processor()
    r = rec(human="<image>\n<audio>\n<audio>\nSame?", answer="yes", image="a.png", audio=["short.wav", "long.wav"])
    s = proc(r, media_root=media)
    n_short = audio_spec.num_tokens(int(0.3 * 16000))
    n_long = audio_spec.num_tokens(int(0.5 * 16000))
    assert (n_short, n_long) == (8, 13)
    assert s.item_tokens == {"vision": [4], "audio": [n_short, n_long]}
    assert (s.kinds == 2).sum() == n_short + n_long
    # Segments count items of every modality in order of appearance: image 0, clips 1 and 2.
    order = [int(x) for x in s.segment_ids[s.segment_ids >= 0].unique_consecutive()]
    assert order == [0, 1, 2]
    assert s.kinds[s.segment_ids == 0].unique().tolist() == [1]
    assert s.kinds[s.segment_ids == 2].unique().tolist() == [2]
    assert s.encoder_inputs["audio"]["input_features"].shape == (2, 16, 64)
    assert abs(s.stats["audio_seconds"] - 0.8) < 1e-6


def test_text_only_and_multi_turn_labels(make_processor, tokenizer):
    proc = make_processor()
    r = {"id": "t", "conversations": [
        {"from": "system", "value": "Be brief."},
        {"from": "human", "value": "What is 3 plus 4?"}, {"from": "gpt", "value": "7"},
        {"from": "human", "value": "Is it even?"}, {"from": "gpt", "value": "no"},
    ]}
    s = proc(r)
    assert (s.kinds == 0).all() and s.encoder_inputs == {} and s.item_tokens == {}
    trained = s.input_ids[s.labels != IGNORE_INDEX]
    assert tokenizer.decode(trained) == "7<eos>no<eos>"
    text = tokenizer.decode(s.input_ids)
    assert text == (
        "<bos>SYSTEM: Be brief.\nUSER: What is 3 plus 4?\nASSISTANT: 7<eos>USER: Is it even?\nASSISTANT: no<eos>"
    )


def test_generate_mode_holds_out_last_reply(make_processor, media, tokenizer):
    proc = make_processor(mode="generate")
    s = proc(rec(image="a.png"), media_root=media)
    assert s.reference == "7"
    assert (s.labels == IGNORE_INDEX).all()
    assert tokenizer.decode(s.input_ids).endswith("What digit is this?\nASSISTANT: ")
    assert proc.decode(tokenizer("7", add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id, 5]) == "7"


def test_generate_mode_needs_a_reference(make_processor):
    import pytest

    from amylum.data.errors import DataError

    r = rec("q")
    r["conversations"].append({"from": "human", "value": "And?"})
    with pytest.raises(DataError, match="record 'q': generation needs the conversation to end with the assistant"):
        make_processor(mode="generate")(r)


def test_literal_special_token_text_is_not_a_control_token(make_processor, tokenizer):
    s = make_processor()(rec(human="Say <eos> please", answer="ok"))
    assert (s.input_ids == tokenizer.eos_token_id).sum() == 1  # only the one ending the reply


def test_extra_keys_are_kept(make_processor):
    r = rec(human="Is 6 even?", answer="yes")
    r["task"] = "text_parity"
    assert make_processor()(r).extra == {"task": "text_parity"}

import json

import pytest
from data_helpers import rec, write_jsonl

from amylum.data.errors import DataError, SkipCounter
from amylum.data.records import load_records, parse_record


def test_media_aliases_and_extra():
    r = parse_record({**rec(image="a.png", audios=["x.wav", "y.wav"]), "task": "t", "id": 3})
    assert r.id == "3"
    assert r.media == {"image": ["a.png"], "audio": ["x.wav", "y.wav"]}
    assert r.extra == {"task": "t"}
    assert [t.role for t in r.turns] == ["user", "assistant"]


@pytest.mark.parametrize(
    "raw, match",
    [
        ({"conversations": []}, "no 'id'"),
        ({"id": "x"}, "record 'x': has no 'conversations'"),
        ({"id": "x", "conversations": []}, "record 'x': 'conversations' is empty"),
        ({"id": "x", "conversations": [{"from": "human", "value": "hi"}]}, "no non-empty assistant"),
        ({"id": "x", "conversations": [{"from": "gpt", "value": "hi"}]}, "no user"),
        ({"id": "x", "conversations": [{"from": "robot", "value": "hi"}]}, "unknown role 'robot'"),
        ({**rec("x"), "image": 5}, "'image' must be a file path"),
        ({**rec("x"), "image": "a.png", "images": ["b.png"]}, "both 'images'"),
        ("not an object", "must be a JSON object"),
    ],
)
def test_invalid_records_name_record_and_problem(raw, match):
    with pytest.raises(DataError, match=match):
        parse_record(raw, "f.jsonl:1")


def test_load_jsonl_json_and_skip(tmp_path):
    good = [rec("a"), rec("b")]
    (tmp_path / "r.json").write_text(json.dumps(good))
    assert [r.id for r in load_records(tmp_path / "r.json")] == ["a", "b"]
    p = tmp_path / "r.jsonl"
    write_jsonl(p, [rec("a"), {"id": "bad", "conversations": []}, rec("c")])
    with p.open("a") as f:
        f.write("{broken json\n")
    with pytest.raises(DataError, match="'bad'"):
        load_records(p)
    skipped = SkipCounter()
    assert [r.id for r in load_records(p, "skip", skipped)] == ["a", "c"]
    assert skipped.count == 2 and skipped.by_reason == {"empty_conversation": 1, "invalid_record": 1}
    assert any("r.jsonl:4" in e and "not valid JSON" in e for e in skipped.examples)

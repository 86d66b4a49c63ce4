"""Human review: export → annotate → import round-trips, and human scores stay labelled."""

import json

import numpy as np
import pytest
from PIL import Image

from amylum.evaluation.review import attach_human_scores, export_review, load_annotations, sample_rows
from amylum.evaluation.results import flatten


@pytest.fixture
def rows(tmp_path):
    Image.fromarray(np.zeros((4, 4), dtype=np.uint8), mode="L").save(tmp_path / "x.png")
    return [{"task": "qa", "id": f"r{i}", "prompt": f"<image>\nQ{i} <b>", "output": str(i % 3), "references": ["1"],
             "choices": None, "media": {"image": [str(tmp_path / "x.png")]} if i % 2 else {}} for i in range(10)]


def test_sample_is_reproducible_and_order_free(rows):
    a = [r["id"] for r in sample_rows(rows, 4, seed=1)]
    assert a == [r["id"] for r in sample_rows(list(reversed(rows)), 4, seed=1)]
    assert len(set(a)) == 4 and a != [r["id"] for r in sample_rows(rows, 4, seed=2)]


def test_export_import_round_trip(rows, tmp_path):
    html, jsonl = export_review(rows, tmp_path / "review", n=6, seed=0)
    page = html.read_text()
    assert "data:image/png;base64," in page  # images embedded: the page works offline
    exported = [json.loads(x) for x in jsonl.read_text().splitlines()]
    q = exported[0]["prompt"].split("\n")[1].split(" ")[0]
    assert f"{q} &lt;b&gt;" in page and f"{q} <b>" not in page.split("<script>")[0]  # inputs are escaped
    assert len(exported) == 6 and all(e["human_score"] is None for e in exported)
    assert "accuracy" not in jsonl.read_text()  # no automated scores to anchor the reviewer
    # a reviewer judges five of six items
    judged = {}
    for k, e in enumerate(exported[:5]):
        e.update(human_score=[1, 0, 0.5, 1, True][k], annotator="ana", comment="ok" if k == 0 else "")
        judged[e["item_id"]] = float(e["human_score"])
    jsonl.write_text("".join(json.dumps(e) + "\n" for e in exported))
    annotations, unjudged = load_annotations(jsonl)
    assert unjudged == 1
    assert {a.item_id: a.score for a in annotations} == judged
    assert {a.annotator for a in annotations} == {"ana"} and annotations[0].comment == "ok"

    # attach to the results of the step these predictions came from
    per_item = {r["id"]: float(r["output"] == "1") for r in rows}
    results = {"step": 5, "tasks": {"qa": {"metrics": {"accuracy": {"value": 0.3, "n": 10, "per_item": per_item,
                                                                    "scorer": "auto:amylum.ExactMatch"}}}}}
    merged = attach_human_scores(results, annotations)
    human = merged["tasks"]["qa"]["human"]["ana"]
    assert human["scorer"] == "human:ana" and human["n"] == 5
    assert human["value"] == pytest.approx(sum(judged.values()) / 5)
    ids = [i.split("/")[1] for i in judged]
    agree = sum((judged[f"qa/{i}"] >= 0.5) == (per_item[i] >= 0.5) for i in ids) / 5
    assert human["agreement"]["accuracy"]["agreement"] == pytest.approx(agree)
    assert "human" not in results["tasks"]["qa"]  # the input is not modified
    assert flatten(merged)["qa/human:ana"] == pytest.approx(human["value"])
    assert flatten(merged)["qa/accuracy"] == 0.3  # automated and human numbers sit side by side


def test_bad_annotations_are_rejected(tmp_path):
    bad = tmp_path / "a.jsonl"
    bad.write_text(json.dumps({"item_id": "qa/r1", "human_score": 3}) + "\n")
    with pytest.raises(ValueError, match=r"a.jsonl:1: human_score must be a number in \[0, 1\]"):
        load_annotations(bad)
    bad.write_text(json.dumps({"item_id": "zz/r1", "human_score": 1}) + "\n")
    annotations, _ = load_annotations(bad)
    assert annotations[0].annotator == "unnamed"
    with pytest.raises(ValueError, match="task 'zz' is not in these results"):
        attach_human_scores({"tasks": {"qa": {}}}, annotations)

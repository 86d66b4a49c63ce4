"""Slices partition the data, and per-bucket scores are the metric on that bucket."""

import pytest

from amylum.evaluation.config import SliceConfig
from amylum.evaluation.metrics import build_metric
from amylum.evaluation.results import flatten, score_predictions
from amylum.evaluation.slices import ItemMeta, partition, slice_label
from amylum.evaluation.tasks import Prediction


def pred(i, output, ref, media=None, audio=None, tokens=10, **fields):
    meta = ItemMeta(media_counts=media or {}, audio_seconds=audio, prompt_tokens=tokens, reference=ref, fields=fields)
    return Prediction("t", f"r{i}", "q", output, [ref], None, {}, meta)


PREDS = [
    pred(0, "7", "7", {"image": 1}, task="digit"),
    pred(1, "3", "8", {"image": 1}, task="digit"),
    pred(2, "yes", "yes", {"image": 2}, task="parity"),
    pred(3, "no", "yes", {}, tokens=40, task="text"),
    pred(4, "5", "5", {"audio": 1}, audio=0.2, task="audio"),
    pred(5, "4", "6", {"audio": 1, "image": 1}, audio=0.9),
    pred(6, "a cat", "a cat", {"image": 5}, tokens=100, task="caption"),
]
SLICES = [
    SliceConfig("modality", "modality"), SliceConfig("images", "num_images", max_count=2),
    SliceConfig("audio_len", "audio_seconds", edges=[0.3, 0.6]), SliceConfig("length", "prompt_tokens", edges=[20, 50]),
    SliceConfig("answer", "answer_type"), SliceConfig("task", "field:task"),
]


@pytest.mark.parametrize("cfg", SLICES, ids=lambda c: c.name)
def test_every_slice_partitions_the_items(cfg):
    buckets = partition(cfg, ((p.id, p.meta) for p in PREDS))
    ids = [i for b in buckets.values() for i in b]
    assert sorted(ids) == sorted(p.id for p in PREDS)  # every item once: disjoint and covering


def test_labels():
    labels = {c.name: [slice_label(c, p.meta) for p in PREDS] for c in SLICES}
    assert labels["modality"] == ["image", "image", "image", "text", "audio", "audio+image", "image"]
    assert labels["images"] == ["1", "1", "2", "0", "0", "1", "2+"]
    assert labels["audio_len"] == ["none"] * 4 + ["<0.3s", ">=0.6s", "none"]
    assert labels["length"] == ["<20", "<20", "<20", "20-50", "<20", "<20", ">=50"]
    assert labels["answer"] == ["number", "number", "yes/no", "yes/no", "number", "number", "other"]
    assert labels["task"] == ["digit", "digit", "parity", "text", "audio", "missing", "caption"]


def test_bucket_scores_and_flat_keys():
    scored = score_predictions([build_metric("accuracy")], PREDS, SLICES)
    assert scored["metrics"]["accuracy"]["value"] == pytest.approx(4 / 7)
    image = scored["slices"]["modality"]["image"]
    assert image["n"] == 4 and image["metrics"]["accuracy"]["value"] == pytest.approx(3 / 4)
    assert scored["slices"]["answer"]["number"]["metrics"]["accuracy"]["value"] == pytest.approx(2 / 4)
    flat = flatten({"tasks": {"t": scored}})
    assert flat["t/accuracy"] == pytest.approx(4 / 7) and flat["t/n"] == 7
    assert flat["t/accuracy/modality=image"] == pytest.approx(3 / 4) and flat["t/n/modality=image"] == 4
    assert flat["t/accuracy/task=missing"] == 0.0
    # stderr of a 0/1 mean: sqrt(p(1-p)/(n-1) · ... ) – sample variance over n items, divided by n
    p = 4 / 7
    assert scored["metrics"]["accuracy"]["stderr"] == pytest.approx(((p * (1 - p) * 7 / 6) / 7) ** 0.5)

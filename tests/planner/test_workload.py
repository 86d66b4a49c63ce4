"""Per-sample work from metadata, the cost-model adapter, corrections and batch statistics."""

import numpy as np
import pytest

from amylum.data.records import parse_record
from amylum.models.modality import AudioInputSpec, ImageInputSpec
from amylum.planner.workload import (
    Corrections, Features, SampleMeta, WorkCoefficients, WorkTable, batch_stats, coefficients_from_preset,
    sample_meta_from_record, work_table)

SPECS = {"vision": ImageInputSpec(image_size=16, tokens_per_item=4), "audio": AudioInputSpec()}
COEF = WorkCoefficients({"vision": 10.0, "audio": 5.0}, {"vision": 1.0, "audio": 0.5},
                        llm_per_token=2.0, llm_per_mask_entry=0.1)


def _dense_entries(lengths_text_before, segs):
    """Count allowed (q, k) pairs of DESIGN §5's mask on an explicit token layout."""
    kinds = []
    for pre, s in zip(lengths_text_before, segs):
        kinds += [-1] * pre + [len(kinds) + pre] * s  # any unique id per segment
    seg = np.array(kinds + [-1] * 3)
    L = len(seg)
    q, k = np.meshgrid(np.arange(L), np.arange(L), indexing="ij")
    allowed = (k <= q) | ((seg[q] == seg[k]) & (seg[q] >= 0))
    return int(allowed.sum()), L


def test_mask_entries_match_dense_reference():
    meta = SampleMeta(text_tokens=2 + 5 + 3, items={"vision": (4, 4), "audio": (7,)})
    f = Features.from_metas([meta])
    n, L = _dense_entries([2, 0, 5], [4, 4, 7])
    assert f.llm_tokens[0] == L
    assert f.mask_entries("multimodal")[0] == n
    assert f.mask_entries("causal")[0] == L * (L + 1) / 2


def test_sample_meta_from_record_uses_spec_token_counts():
    rec = parse_record({"id": "1", "images": ["a.png", "b.png"], "audio": "x.wav", "audio_seconds": 2.0,
                        "conversations": [{"from": "human", "value": "<image><image><audio> hi"},
                                          {"from": "gpt", "value": "ok"}]})
    m = sample_meta_from_record(rec, SPECS, text_tokens=lambda t: len(t.split()))
    assert m.items["vision"] == (4, 4)
    assert m.items["audio"] == (SPECS["audio"].num_tokens(32000),)
    assert m.text_tokens == 1 + 1 + 2 * 4  # placeholders are not text


def test_audio_length_must_be_in_metadata():
    rec = parse_record({"id": "a", "audio": "x.wav", "conversations": [
        {"from": "human", "value": "<audio>"}, {"from": "gpt", "value": "ok"}]})
    with pytest.raises(ValueError, match="audio_seconds"):
        sample_meta_from_record(rec, SPECS)


def test_work_table_components_and_corrections():
    metas = [SampleMeta(10), SampleMeta(10, {"vision": (4,)}), SampleMeta(0, {"audio": (3,)})]
    t = work_table(Features.from_metas(metas), COEF)
    assert t.modalities == ("vision", "audio")
    np.testing.assert_allclose(t.encoder[:, 0], [0, 10 + 4, 0])
    np.testing.assert_allclose(t.encoder[:, 1], [0, 0, 5 + 1.5])
    L = np.array([10, 14, 3.0])
    entries = L * (L + 1) / 2 + np.array([0, 6, 3])
    np.testing.assert_allclose(t.llm, 2 * L + 0.1 * entries)
    t2 = work_table(Features.from_metas(metas), COEF, Corrections({"llm": 2.0, "vision": 0.5}))
    np.testing.assert_allclose(t2.llm, 2 * t.llm)
    np.testing.assert_allclose(t2.encoder[:, 0], 0.5 * t.encoder[:, 0])
    np.testing.assert_allclose(t2.encoder[:, 1], t.encoder[:, 1])


def test_unknown_modality_is_a_clear_error():
    f = Features.from_metas([SampleMeta(3, {"video": (5,)})])
    with pytest.raises(ValueError, match="video"):
        work_table(f, COEF)


def test_corrections_fit_least_squares():
    obs = [("llm", 1.0, 2.0), ("llm", 2.0, 4.0), ("vision", 1.0, 0.5)]
    c = Corrections.fit(obs)
    assert c.get("llm") == pytest.approx(2.0) and c.get("vision") == pytest.approx(0.5) and c.get("audio") == 1.0


def test_coefficients_from_cost_model_are_frozen_aware():
    trained = coefficients_from_preset("tiny", scenario="all_trainable")
    frozen = coefficients_from_preset("tiny", scenario="frozen_encoders")
    assert set(trained.modalities) == {"vision", "audio"}
    assert trained.llm_per_token > 0 and trained.llm_per_mask_entry > 0
    # a frozen encoder with nothing trainable upstream runs forward only
    assert frozen.encoder_per_item["vision"] < trained.encoder_per_item["vision"]
    assert frozen.llm_per_token == pytest.approx(trained.llm_per_token)


def test_batch_aggregates_vary_far_less_than_samples():
    rng = np.random.default_rng(0)
    n = 64 * 256
    imgs = rng.choice(9, n, p=[.22, .55, .09, .05, .03, .025, .015, .01, .01]).astype(float)
    f = Features(np.clip(np.exp(rng.normal(6, 1, n)), 32, 4096), {"vision": imgs}, {"vision": imgs * 576},
                 imgs * 576 * 575 / 2)
    s = batch_stats(work_table(f, WorkCoefficients({"vision": 1e-3}, {"vision": 0.0}, 1e-4, 1e-8)), 256)
    assert s.batches == 64
    for c in ("vision", "llm", "total"):
        assert s.per_batch_cv[c] * 5 < s.per_sample_cv[c]
    assert "ratio" in s.table()


def test_worktable_validation():
    with pytest.raises(ValueError, match="shapes"):
        WorkTable(np.zeros((3, 2)), np.zeros(3), np.zeros(3), ("a",))


def test_coefficients_from_a_built_model_are_frozen_aware():
    from amylum.models import build_preset
    from amylum.planner.workload import coefficients_from_model

    model = build_preset("tiny-valm", device="meta")
    trainable = coefficients_from_model(model)
    assert set(trainable.modalities) == {"vision", "audio"}
    assert trainable.llm_per_token > 0 and trainable.llm_per_mask_entry > 0
    for p in model.encoders["vision"].encoder.parameters():
        p.requires_grad_(False)
    frozen = coefficients_from_model(model, mask="causal")
    # a frozen encoder with nothing trainable upstream runs forward only: about a third of the work
    assert frozen.encoder_per_item["vision"] < 0.5 * trainable.encoder_per_item["vision"]
    assert frozen.encoder_per_item["audio"] == trainable.encoder_per_item["audio"]
    assert frozen.mask == "causal"

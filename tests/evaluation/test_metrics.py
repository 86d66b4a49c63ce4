"""Every metric against values computed by hand (the arithmetic is in the comments)."""

import math

import pytest

from amylum.evaluation.metrics import EvalItem, build_metric
from amylum.evaluation.metrics.cider import cider_d
from amylum.evaluation.metrics.match import choice_index
from amylum.evaluation.metrics.rouge import lcs_length
from amylum.evaluation.normalize import answer_type, normalize


def items(pairs, choices=None):
    return [EvalItem(str(i), p, tuple([r] if isinstance(r, str) else r), choices) for i, (p, r) in enumerate(pairs)]


def test_normalization_levels():
    assert normalize(" Yes. ", "none") == " Yes. "
    assert normalize(" Yes. ", "basic") == "yes"
    assert normalize("The two.", "basic") == "the two"
    assert normalize("The two.", "vqa") == "2"
    assert normalize("yes,no", "vqa") == "yes no"
    with pytest.raises(ValueError, match="normalize"):
        normalize("x", "fancy")
    assert [answer_type(a) for a in ("Yes", "12", "two", "a cat")] == ["yes/no", "number", "number", "other"]


def test_exact_match_and_accuracy():
    data = items([("Yes.", "yes"), ("the 2", "two"), ("7", "7"), ("cat", ["dog", "Cat"])])
    # strict: only "7" == "7"                        → 1/4
    assert build_metric({"type": "exact_match", "normalize": "none"}).score(data).value == 0.25
    # basic: "yes", "7", "cat" (any reference)       → 3/4
    assert build_metric("exact_match").score(data).value == 0.75
    # vqa: also "the 2" → "2" == "two" → "2"        → 4/4
    s = build_metric("accuracy").score(data)
    assert s.value == 1.0 and s.per_item == [1.0, 1.0, 1.0, 1.0]


def test_multiple_choice():
    choices = ("red", "green", "blue")
    assert choice_index("B", choices) == 1
    assert choice_index("(c) blue", choices) == 2
    assert choice_index("Green.", choices) == 1
    assert choice_index("purple", choices) is None
    data = items([("B", "green"), ("(a)", "A"), ("blue", "B"), ("I think so", "C")], choices)
    # hits: B=green ✓, (a)=A ✓, blue≠B ✗, no option ✗ → 2/4
    assert build_metric("multiple_choice").score(data).value == 0.5
    with pytest.raises(ValueError, match="no 'choices'"):
        build_metric("multiple_choice").score(items([("A", "A")]))


def test_bleu_hand_computed():
    # hyp "a b c d e" vs ref "a b c d f": n-gram precisions 4/5, 3/4, 2/3, 1/2, brevity penalty 1
    # BLEU = 100 * (4/5 · 3/4 · 2/3 · 1/2) ** (1/4) = 100 * 0.2 ** 0.25
    m = build_metric("bleu")
    assert m.score(items([("a b c d e", "a b c d f")])).value == pytest.approx(100 * 0.2**0.25, abs=1e-6)
    assert m.score(items([("the cat sat on the mat", "the cat sat on the mat")])).value == pytest.approx(100)
    assert m.scorer.startswith("auto:sacrebleu:nrefs:1|")
    assert m.scale == "0-100"
    # multi-reference with unequal reference counts is padded for sacrebleu
    assert m.score(items([("a b c d e", ["a b c d e", "x"]), ("a b c d e", "a b c d e")])).value == pytest.approx(100)


def test_chrf_hand_computed():
    # character unigrams only (spaces dropped), β = 1: "ab" vs "ac" → P = R = 1/2 → F = 50
    m = build_metric({"type": "chrf", "char_order": 1, "word_order": 0, "beta": 1})
    assert m.score(items([("ab", "ac")])).value == pytest.approx(50.0)
    assert build_metric("chrf").score(items([("same text", "same text")])).value == pytest.approx(100.0)


def test_rouge_l_hand_computed():
    assert lcs_length("a b c d".split(), "a c d b".split()) == 3
    # cand "the cat sat on mat" (5 words), ref "the cat is on the mat" (6): LCS "the cat on mat" = 4
    p, r, b2 = 4 / 5, 4 / 6, 1.2**2
    expected = (1 + b2) * p * r / (r + b2 * p)
    s = build_metric("rouge_l").score(items([("The cat sat on mat.", "the cat is on the mat"), ("x", "y")]))
    assert s.per_item == pytest.approx([expected, 0.0])
    assert s.value == pytest.approx(expected / 2)
    # with β = 1 it is the plain F1: 2PR/(P+R)
    f1 = build_metric({"type": "rouge_l", "beta": 1}).score(items([("the cat sat on mat", "the cat is on the mat")]))
    assert f1.value == pytest.approx(2 * p * r / (p + r))


def test_cider_hand_computed():
    # Item 1's candidate equals its reference, item 2 shares nothing. N = 2 items, each n-gram of
    # item 1's reference has df = 1, so every weight is log 2: equal vectors → cosine 1 for
    # n = 1, 2 (no 3-/4-grams: 0), lengths equal → no penalty. Item 1 = 10 · (1 + 1 + 0 + 0) / 4 = 5.
    assert cider_d(["a b", "c d"], [["a b"], ["e f"]]) == pytest.approx([5.0, 0.0])
    # Clipping (the "-D"): cand "a a" vs ref "a b" (plus an unrelated item so IDF = log 2 = L).
    # n = 1: cand {a: 2L}, ref {a: L, b: L}; Σ min(2L, L)·L = L²; norms 2L and √2 L → 1 / (2√2).
    # n = 2: no shared bigram → 0. Both have one bigram → no length penalty.
    # score = 10 · (1 / (2√2)) / 4
    assert cider_d(["a a", "z"], [["a b"], ["y"]])[0] == pytest.approx(10 / (2 * math.sqrt(2)) / 4)
    # two references: the mean of the per-reference similarities
    two = cider_d(["a b", "c d"], [["a b", "x y"], ["e f"]])[0]
    assert 0 < two < 5
    m = build_metric("cider")
    assert m.score(items([("a b", "a b"), ("c d", "e f")])).value == pytest.approx(2.5)
    # a set of one item has IDF log(1) = 0 everywhere: coco-caption gives 0 too
    assert cider_d(["a b"], [["a b"]]) == [0.0]


def test_custom_metric_by_import_path(tmp_path, monkeypatch):
    (tmp_path / "my_metrics.py").write_text(
        "def length_ratio(predictions, references, scale=1.0):\n"
        "    return [scale * len(p) / len(r[0]) for p, r in zip(predictions, references)]\n"
        "length_ratio.version = '2'\n"
        "def corpus(predictions, references):\n"
        "    return 0.25\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    m = build_metric({"type": "my_metrics:length_ratio", "scale": 2.0})
    assert m.name == "length_ratio" and m.version == "2" and m.scorer == "auto:custom:my_metrics:length_ratio"
    assert m.score(items([("ab", "abcd"), ("abcd", "abcd")])).value == pytest.approx((1.0 + 2.0) / 2)
    assert build_metric("my_metrics:corpus").score(items([("a", "b")])).value == 0.25
    with pytest.raises(ValueError, match="has no attribute"):
        build_metric("my_metrics:nope")
    with pytest.raises(ValueError, match="unknown metric"):
        build_metric("blue")


def test_metric_describe_and_errors():
    d = build_metric("accuracy").describe()
    assert d == {"name": "accuracy", "version": "1", "scorer": "auto:amylum.ExactMatch", "scale": "0-1",
                 "params": {"normalize": "vqa"}, "higher_is_better": True}
    with pytest.raises(ValueError, match="unknown options"):
        build_metric({"type": "rouge_l", "alpha": 1})
    with pytest.raises(ValueError, match="at least one item"):
        build_metric("accuracy").score([])

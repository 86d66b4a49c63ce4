"""Answer normalisation for exact-match style metrics.

Three levels, named in every score's metadata so a number always says how lenient it was:

* ``none``  – the strings are compared as they are;
* ``basic`` – lower case, collapsed whitespace, surrounding punctuation dropped
  (``" Yes. "`` → ``"yes"``; the demo's ``normalize_answer``);
* ``vqa``   – ``basic`` plus what VQA/SQuAD-style scorers do: all punctuation removed,
  articles (a, an, the) dropped, number words up to twenty written as digits
  (``"The two."`` → ``"2"``).
"""

from __future__ import annotations

import re
import string

NORMALIZATIONS = ("none", "basic", "vqa")

_NUMBER_WORDS = {
    w: str(i)
    for i, w in enumerate(
        "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen "
        "sixteen seventeen eighteen nineteen twenty".split()
    )
}
_ARTICLES = {"a", "an", "the"}
_PUNCT = re.compile(f"[{re.escape(string.punctuation)}]")


def check_normalization(level: str) -> str:
    if level not in NORMALIZATIONS:
        raise ValueError(f"normalize = {level!r}; expected one of {', '.join(NORMALIZATIONS)}")
    return level


def normalize(text: str, level: str = "basic") -> str:
    check_normalization(level)
    if level == "none":
        return text
    text = re.sub(r"\s+", " ", text.strip().lower()).strip(" .,!?;:'\"")
    if level == "basic":
        return text
    # Punctuation becomes a space (not nothing) so "yes,no" stays two words.
    words = _PUNCT.sub(" ", text).split()
    words = [_NUMBER_WORDS.get(w, w) for w in words if w not in _ARTICLES]
    return " ".join(words)


def tokenize_words(text: str) -> list[str]:
    """Lower-cased words with punctuation removed: the tokenisation of ROUGE-L and CIDEr here.

    (coco-caption runs the Java PTB tokenizer; on plain captions the two agree except on
    contractions and hyphenated words, which PTB splits.)
    """
    return _PUNCT.sub(" ", text.lower()).split()


def answer_type(reference: str) -> str:
    """VQA-style answer type of a reference: ``yes/no``, ``number`` or ``other``."""
    norm = normalize(reference, "vqa")
    if norm in ("yes", "no"):
        return "yes/no"
    if re.fullmatch(r"-?\d+(\.\d+)?", norm):
        return "number"
    return "other"

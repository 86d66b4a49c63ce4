"""A shipped, generated demo dataset: a real, learnable multimodal task from package data only.

Images are scikit-learn's 8×8 handwritten digits (``load_digits``, 1,797 images), upscaled to
PNGs. Audio is generated: each digit is a tone at its own frequency (evenly spaced on the mel
scale, 300 Hz – 4 kHz), of random length, loudness, onset and pitch jitter, plus noise.
Answers are one short token sequence (a number, ``yes`` / ``no``) so a tiny model learns
them in minutes on a CPU.

Tasks (``record["task"]``):

=================  =========================================================  ==========
task               question                                                   answer
=================  =========================================================  ==========
digit              ``<image>`` What digit is this?                            ``7``
parity             ``<image>`` Is this digit even?                            ``yes``/``no``
sum                ``<image><image>`` What is the sum of the two digits?      ``12``
multi_turn         digit, then "Is it even?" as a second turn                 ``7``, ``no``
text_sum           What is 3 plus 4? (text only)                              ``7``
text_parity        Is 6 even? (text only)                                     ``yes``
audio_digit        ``<audio>`` Which digit does this sound encode?            ``5``   (valm)
audio_parity       ``<audio>`` Is the digit in this sound even?               ``no``  (valm)
audio_image_same   ``<image><audio>`` Do the image and the sound show …?      ``yes`` (valm)
=================  =========================================================  ==========

The held-out split uses digit images that no training record uses, so eval accuracy on
image tasks measures generalisation to unseen handwriting. Everything is a pure function of
``seed``: same seed, byte-identical files.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
from PIL import Image

from amylum.data.chat import ChatTemplate

TASKS = {
    "vlm": {"digit": 0.35, "parity": 0.2, "sum": 0.2, "multi_turn": 0.05, "text_sum": 0.1, "text_parity": 0.1},
    "valm": {
        "digit": 0.2, "parity": 0.1, "sum": 0.1, "multi_turn": 0.05, "text_sum": 0.05, "text_parity": 0.05,
        "audio_digit": 0.25, "audio_parity": 0.1, "audio_image_same": 0.1,
    },
}
QUESTIONS = {
    "digit": "What digit is this?",
    "parity": "Is this digit even?",
    "sum": "What is the sum of the two digits?",
    "follow_up": "Is it even?",
    "audio_digit": "Which digit does this sound encode?",
    "audio_parity": "Is the digit in this sound even?",
    "audio_image_same": "Do the image and the sound show the same digit?",
}
EVAL_IMAGE_FRACTION = 0.2


def digit_frequency(d: int) -> float:
    """Tone frequency of digit ``d``: 10 points evenly spaced in mel between 300 Hz and 4 kHz."""
    mel = lambda f: 2595.0 * np.log10(1.0 + f / 700.0)  # noqa: E731
    lo, hi = mel(300.0), mel(4000.0)
    m = lo + (hi - lo) * d / 9
    return float(700.0 * (10 ** (m / 2595.0) - 1.0))


def synth_digit_audio(
    d: int, rng: np.random.Generator, sampling_rate: int = 16000, seconds: tuple[float, float] = (0.2, 0.45)
) -> np.ndarray:
    """A noisy tone encoding digit ``d``: random duration, onset, loudness and ±2 % pitch."""
    n = int(rng.uniform(*seconds) * sampling_rate)
    onset = int(rng.uniform(0.0, 0.25) * n)
    tone_len = n - onset - int(rng.uniform(0.0, 0.1) * n)
    t = np.arange(tone_len) / sampling_rate
    f = digit_frequency(d) * rng.uniform(0.98, 1.02)
    tone = rng.uniform(0.3, 0.8) * np.sin(2 * np.pi * f * t + rng.uniform(0, 2 * np.pi))
    ramp = min(tone_len // 2, int(0.01 * sampling_rate))  # 10 ms fades: no clicks across all bins
    if ramp:
        env = np.ones(tone_len)
        env[:ramp] = np.linspace(0, 1, ramp)
        env[-ramp:] = np.linspace(1, 0, ramp)
        tone *= env
    wav = rng.normal(0.0, 0.05, n)
    wav[onset : onset + tone_len] += tone
    return np.clip(wav, -1.0, 1.0).astype(np.float32)


@dataclass(frozen=True)
class DemoDataset:
    root: Path
    train: Path
    eval: Path
    tokenizer: Path | None
    kind: str


def make_demo_dataset(
    out_dir: str | Path,
    kind: Literal["vlm", "valm"] = "vlm",
    n_train: int = 2000,
    n_eval: int = 200,
    seed: int = 0,
    image_px: int = 32,
    sampling_rate: int = 16000,
    audio_seconds: tuple[float, float] = (0.2, 0.45),
    build_tokenizer: bool = True,
) -> DemoDataset:
    """Write ``train.jsonl``, ``eval.jsonl``, ``images/``, ``audio/`` (valm) and ``tokenizer/``.

    ``image_px`` is the PNG size; the processor resizes to each encoder's ``image_size``.
    """
    from sklearn.datasets import load_digits

    if kind not in TASKS:
        raise ValueError(f"kind must be one of {sorted(TASKS)}, got {kind!r}")
    if n_train < 1 or n_eval < 0:
        raise ValueError(f"need n_train >= 1 and n_eval >= 0, got {n_train}, {n_eval}")
    root = Path(out_dir)
    (root / "images").mkdir(parents=True, exist_ok=True)
    if kind == "valm":
        (root / "audio").mkdir(exist_ok=True)

    digits = load_digits()
    images, targets = digits.images, digits.target.astype(int)
    perm = np.random.default_rng([seed, 0]).permutation(len(targets))
    n_eval_img = int(len(perm) * EVAL_IMAGE_FRACTION)
    pools = {"eval": np.sort(perm[:n_eval_img]), "train": np.sort(perm[n_eval_img:])}

    written: set[int] = set()
    gen = _Generator(root, images, targets, written, image_px, sampling_rate, audio_seconds)
    paths = {}
    for split_id, (split, n) in enumerate((("train", n_train), ("eval", n_eval))):
        rng = np.random.default_rng([seed, 1 + split_id])
        records = [gen.record(f"{split}-{i:05d}", TASKS[kind], pools[split], rng) for i in range(n)]
        paths[split] = root / f"{split}.jsonl"
        with paths[split].open("w", encoding="utf-8") as f:
            for r in records:
                f.write(json.dumps(r, sort_keys=True) + "\n")

    tok_dir = None
    if build_tokenizer:
        from amylum.data.tokenizer import build_demo_tokenizer

        tok_dir = root / "tokenizer"
        build_demo_tokenizer(demo_texts(), vocab_size=384, save_dir=tok_dir)
    meta = {"kind": kind, "seed": seed, "n_train": n_train, "n_eval": n_eval, "image_px": image_px,
            "sampling_rate": sampling_rate, "tasks": TASKS[kind]}
    (root / "meta.json").write_text(json.dumps(meta, indent=1, sort_keys=True) + "\n")
    return DemoDataset(root, paths["train"], paths["eval"], tok_dir, kind)


class _Generator:
    """Builds one record at a time; writes each digit image at most once, audio per record."""

    def __init__(self, root, images, targets, written, image_px, sampling_rate, audio_seconds):
        self.root, self.images, self.targets, self.written = root, images, targets, written
        self.image_px, self.sr, self.audio_seconds = image_px, sampling_rate, audio_seconds

    def image(self, idx: int) -> str:
        rel = f"images/digit_{idx:04d}.png"
        if idx not in self.written:
            arr = (self.images[idx] * (255.0 / 16.0)).clip(0, 255).astype(np.uint8)  # values are 0..16
            Image.fromarray(arr, mode="L").resize((self.image_px, self.image_px), Image.Resampling.BILINEAR).save(
                self.root / rel, optimize=False
            )
            self.written.add(idx)
        return rel

    def audio(self, rid: str, k: int, d: int, rng: np.random.Generator) -> str:
        rel = f"audio/{rid}_{k}.wav"
        import soundfile as sf  # lazily: only demo generation writes audio

        sf.write(self.root / rel, synth_digit_audio(d, rng, self.sr, self.audio_seconds), self.sr, subtype="PCM_16")
        return rel

    def record(self, rid: str, tasks: dict[str, float], pool: np.ndarray, rng: np.random.Generator) -> dict:
        names = list(tasks)
        p = np.array([tasks[t] for t in names])
        task = names[int(rng.choice(len(names), p=p / p.sum()))]
        pick = lambda: int(pool[rng.integers(len(pool))])  # noqa: E731
        yn = lambda b: "yes" if b else "no"  # noqa: E731
        rec: dict = {"id": rid, "task": task}
        if task in ("digit", "parity", "multi_turn"):
            i = pick()
            d = int(self.targets[i])
            rec["image"] = self.image(i)
            q = QUESTIONS["parity" if task == "parity" else "digit"]
            a = yn(d % 2 == 0) if task == "parity" else str(d)
            conv = [("human", "<image>\n" + q), ("gpt", a)]
            if task == "multi_turn":
                conv += [("human", QUESTIONS["follow_up"]), ("gpt", yn(d % 2 == 0))]
        elif task == "sum":
            i, j = pick(), pick()
            rec["images"] = [self.image(i), self.image(j)]
            conv = [("human", "<image>\n<image>\n" + QUESTIONS["sum"]),
                    ("gpt", str(int(self.targets[i]) + int(self.targets[j])))]
        elif task == "text_sum":
            a, b = int(rng.integers(10)), int(rng.integers(10))
            conv = [("human", f"What is {a} plus {b}?"), ("gpt", str(a + b))]
        elif task == "text_parity":
            a = int(rng.integers(10))
            conv = [("human", f"Is {a} even?"), ("gpt", yn(a % 2 == 0))]
        elif task in ("audio_digit", "audio_parity"):
            d = int(rng.integers(10))
            rec["audio"] = self.audio(rid, 0, d, rng)
            answer = str(d) if task == "audio_digit" else yn(d % 2 == 0)
            conv = [("human", "<audio>\n" + QUESTIONS[task]), ("gpt", answer)]
        elif task == "audio_image_same":
            i = pick()
            d_img = int(self.targets[i])
            same = bool(rng.random() < 0.5)
            d_aud = d_img if same else int((d_img + rng.integers(1, 10)) % 10)
            rec["image"] = self.image(i)
            rec["audio"] = self.audio(rid, 0, d_aud, rng)
            conv = [("human", "<image>\n<audio>\n" + QUESTIONS[task]), ("gpt", yn(same))]
        else:  # pragma: no cover - TASKS and this table are edited together
            raise AssertionError(task)
        rec["conversations"] = [{"from": f, "value": v} for f, v in conv]
        return rec


def demo_texts(template: ChatTemplate | None = None) -> list[str]:
    """Every string a demo conversation can contain, to train the demo tokenizer on."""
    template = template or ChatTemplate()
    texts = list(template.marker_texts()) + list(QUESTIONS.values())
    texts += [str(n) for n in range(19)] + ["yes", "no"]
    texts += [f"What is {a} plus {b}?" for a in range(10) for b in range(10)]
    texts += [f"Is {a} even?" for a in range(10)]
    return texts * 3  # repeat so frequent pieces (markers, questions) merge into few tokens


def normalize_answer(text: str) -> str:
    """Lowercase, trim, drop surrounding punctuation and collapse spaces: ``" Yes. "`` → ``"yes"``."""
    text = re.sub(r"\s+", " ", text.strip().lower())
    return text.strip(" .,!?;:'\"")


def answer_accuracy(predictions: Sequence[str], references: Sequence[str]) -> float:
    """Normalized exact match, in [0, 1]."""
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions but {len(references)} references")
    if not references:
        raise ValueError("answer_accuracy needs at least one reference")
    hits = sum(normalize_answer(p) == normalize_answer(r) for p, r in zip(predictions, references))
    return hits / len(references)

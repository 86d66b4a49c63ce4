"""A tiny held-out set (images, two-image, text-only and one broken record) and a tiny VLM."""

import json

import numpy as np
import pytest
from PIL import Image

from amylum.data.demo import demo_texts
from amylum.data.tokenizer import build_demo_tokenizer


@pytest.fixture(scope="session")
def tokenizer():
    return build_demo_tokenizer(demo_texts(), vocab_size=300)


@pytest.fixture(scope="session")
def model(tokenizer):
    from amylum.models import build_preset

    return build_preset("tiny-vlm", vocab_size=len(tokenizer), seed=0).eval()


def conv(question, answer):
    return [{"from": "human", "value": question}, {"from": "gpt", "value": answer}]


@pytest.fixture
def eval_set(tmp_path):
    rng = np.random.default_rng(0)
    (tmp_path / "img").mkdir()
    for i in range(3):
        Image.fromarray(rng.integers(0, 255, (12, 12), dtype=np.uint8), mode="L").save(tmp_path / f"img/{i}.png")
    records = [
        {"id": "d0", "task": "digit", "image": "img/0.png", "conversations": conv("<image>\nWhat digit is this?", "7")},
        {"id": "d1", "task": "digit", "image": "img/1.png", "conversations": conv("<image>\nWhat digit is this?", "3")},
        {"id": "p0", "task": "parity", "image": "img/2.png", "conversations": conv("<image>\nIs this digit even?", "yes")},
        {"id": "s0", "task": "sum", "images": ["img/0.png", "img/1.png"],
         "conversations": conv("<image>\n<image>\nWhat is the sum of the two digits?", "10")},
        {"id": "t0", "task": "text_sum", "conversations": conv("What is 3 plus 4?", "7")},
        {"id": "t1", "task": "text_parity", "conversations": conv("Is 6 even?", "yes")},
        {"id": "bad", "task": "digit", "image": "img/missing.png", "conversations": conv("<image>\nWhat digit is this?", "1")},
    ]
    path = tmp_path / "eval.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path

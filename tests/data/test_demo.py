import hashlib
import json

import pytest

from amylum.data.dataset import MultimodalDataset
from amylum.data.demo import answer_accuracy, make_demo_dataset, normalize_answer
from amylum.data.processor import MultimodalProcessor
from amylum.data.tokenizer import load_tokenizer


def _digest(root):
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    return make_demo_dataset(tmp_path_factory.mktemp("demo"), "valm", n_train=120, n_eval=40, seed=3)


def test_same_seed_same_files(demo, tmp_path):
    again = make_demo_dataset(tmp_path / "again", "valm", n_train=120, n_eval=40, seed=3)
    assert _digest(demo.root) == _digest(again.root)
    other = make_demo_dataset(tmp_path / "other", "valm", n_train=120, n_eval=40, seed=4, build_tokenizer=False)
    assert (other.root / "train.jsonl").read_bytes() != (demo.root / "train.jsonl").read_bytes()


def test_split_uses_disjoint_images_and_covers_tasks(demo):
    def load(p):
        return [json.loads(line) for line in p.read_text().splitlines()]

    train, ev = load(demo.train), load(demo.eval)
    assert len(train) == 120 and len(ev) == 40
    imgs = lambda rs: {i for r in rs for i in ([r["image"]] if "image" in r else r.get("images", []))}  # noqa: E731
    assert imgs(train) and imgs(ev) and not imgs(train) & imgs(ev)
    tasks = {r["task"] for r in train}
    assert {"digit", "sum", "audio_digit", "text_sum"} <= tasks
    assert all(len(r["conversations"][-1]["value"]) <= 3 for r in train)  # short answers


def test_demo_records_process(demo):
    from amylum.models.modality import AudioInputSpec, ImageInputSpec

    tok = load_tokenizer(demo.tokenizer)
    specs = {"vision": ImageInputSpec(image_size=16, tokens_per_item=4),
             "audio": AudioInputSpec(n_mels=16, max_frames=64, frames_per_token=4)}
    ds = MultimodalDataset(demo.train, MultimodalProcessor(tok, specs, max_length=96))
    samples = [ds[i] for i in range(len(ds))]
    assert all(s is not None for s in samples)
    assert max(len(s) for s in samples) <= 96


def test_vlm_has_no_audio(tmp_path):
    d = make_demo_dataset(tmp_path, "vlm", n_train=50, n_eval=10, seed=0, build_tokenizer=False)
    assert "audio" not in d.train.read_text() and not (tmp_path / "audio").exists()
    with pytest.raises(ValueError, match="kind must be"):
        make_demo_dataset(tmp_path, "video")


def test_answer_accuracy():
    assert normalize_answer("  Yes. ") == "yes"
    assert answer_accuracy(["7", "Yes.", "no", "12 "], ["7", "yes", "yes", "12"]) == 0.75
    with pytest.raises(ValueError, match="2 predictions but 1 references"):
        answer_accuracy(["a", "b"], ["a"])

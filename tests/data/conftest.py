import numpy as np
import pytest
import soundfile as sf
from PIL import Image

from amylum.data.demo import demo_texts
from amylum.data.processor import MultimodalProcessor
from amylum.data.tokenizer import build_demo_tokenizer
from amylum.models.modality import AudioInputSpec, ImageInputSpec

SR = 16000


@pytest.fixture(scope="session")
def tokenizer():
    return build_demo_tokenizer(demo_texts(), vocab_size=384)


@pytest.fixture
def image_spec():
    return ImageInputSpec(image_size=16, tokens_per_item=4)


@pytest.fixture
def audio_spec():
    # 64 frames of 10 ms = 0.64 s window; 4 frames per token.
    return AudioInputSpec(n_mels=16, max_frames=64, frames_per_token=4)


@pytest.fixture
def specs(image_spec, audio_spec):
    return {"vision": image_spec, "audio": audio_spec}


@pytest.fixture
def make_processor(tokenizer, specs):
    def make(**kw):
        kw.setdefault("max_length", 128)
        return MultimodalProcessor(tokenizer, kw.pop("specs", specs), **kw)

    return make


@pytest.fixture
def media(tmp_path):
    """A folder with two PNGs, a 0.3 s and a 0.5 s WAV, a corrupt PNG and a non-audio file."""
    rng = np.random.default_rng(0)
    for name in ("a.png", "b.png"):
        Image.fromarray(rng.integers(0, 255, (20, 20, 3), dtype=np.uint8)).save(tmp_path / name)
    sf.write(tmp_path / "short.wav", rng.normal(0, 0.1, int(0.3 * SR)).astype(np.float32), SR)
    sf.write(tmp_path / "long.wav", rng.normal(0, 0.1, int(0.5 * SR)).astype(np.float32), SR)
    (tmp_path / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 10)
    (tmp_path / "noise.wav").write_bytes(b"not a wav file at all")
    return tmp_path


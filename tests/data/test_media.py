import numpy as np
import pytest
import soundfile as sf
import torch
from PIL import Image

from amylum.data.audio import AudioFeaturizer, load_audio
from amylum.data.image import image_to_pixels
from amylum.models.modality import AudioInputSpec, ImageInputSpec


def test_image_resize_and_normalize():
    img = Image.new("RGB", (40, 30), (255, 0, 128))
    x = image_to_pixels(img, ImageInputSpec(image_size=16, tokens_per_item=4))
    assert x.shape == (3, 16, 16) and x.dtype == torch.float32
    # mean = std = 0.5: 255 → 1, 0 → -1
    assert torch.allclose(x[0], torch.ones(16, 16)) and torch.allclose(x[1], -torch.ones(16, 16))
    gray_spec = ImageInputSpec(image_size=8, tokens_per_item=1, num_channels=1, mean=(0.0,), std=(1.0,))
    gray = image_to_pixels(img, gray_spec)
    assert gray.shape == (1, 8, 8) and 0 <= float(gray.min()) <= float(gray.max()) <= 1


def test_audio_resample_and_stereo(tmp_path):
    t = np.arange(8000) / 8000
    stereo = np.stack([np.sin(2 * np.pi * 440 * t), np.sin(2 * np.pi * 440 * t)], axis=1).astype(np.float32)
    sf.write(tmp_path / "s.wav", stereo, 8000)
    wav = load_audio(tmp_path / "s.wav", 16000)
    assert wav.ndim == 1 and wav.shape[0] == 16000 and wav.dtype == np.float32


def test_whisper_features_padded_to_window():
    spec = AudioInputSpec(n_mels=16, max_frames=64, frames_per_token=4)
    f = AudioFeaturizer(spec)(np.random.default_rng(0).normal(0, 0.1, 4000).astype(np.float32))
    assert f.shape == (16, 64) and torch.isfinite(f).all()
    full = AudioFeaturizer(AudioInputSpec())(np.zeros(16000, dtype=np.float32))
    assert full.shape == (80, 3000)


def test_features_differ_by_tone():
    from amylum.data.demo import synth_digit_audio

    fz = AudioFeaturizer(AudioInputSpec(n_mels=16, max_frames=64, frames_per_token=4))
    peaks = []
    for d in (0, 5, 9):
        f = fz(synth_digit_audio(d, np.random.default_rng(0)))
        peaks.append(int(f.mean(dim=1).argmax()))
    assert peaks == sorted(peaks) and len(set(peaks)) == 3  # higher digit → higher mel bin


def test_audio_spec_token_counts_follow_spec():
    spec = AudioInputSpec(n_mels=16, max_frames=64, frames_per_token=4)
    with pytest.raises(ValueError):
        spec.num_tokens(0)
    assert spec.num_tokens(160 * 64) == 16

"""Audio files → Whisper log-mel ``input_features`` for an :class:`AudioInputSpec`.

WAV/FLAC/OGG are read with soundfile; stereo is averaged to mono; a clip at another rate is
resampled with scipy's polyphase filter. Features come from ``WhisperFeatureExtractor``
built from the spec's parameters (nothing is downloaded) and are padded to
``spec.max_frames`` because Whisper's encoder wants its full window.
"""

from __future__ import annotations

from math import gcd
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from amylum.data.errors import BAD_AUDIO, MISSING_FILE, UNREADABLE_FILE, DataError
if TYPE_CHECKING:
    from amylum.models.modality import AudioInputSpec


def load_audio(path: str | Path, sampling_rate: int, record_id: str = "?") -> np.ndarray:
    """Mono float32 waveform at ``sampling_rate``."""
    path = Path(path)
    if not path.is_file():
        raise DataError(record_id, f"audio file {str(path)!r} does not exist", MISSING_FILE)
    # Imported here so that importing amylum.data (e.g. for MultimodalBatch) needs no libsndfile.
    import soundfile as sf

    try:
        wav, sr = sf.read(str(path), dtype="float32", always_2d=True)
    except PermissionError as e:
        raise DataError(record_id, f"audio file {str(path)!r} cannot be read: {e}", UNREADABLE_FILE) from None
    except (sf.LibsndfileError, RuntimeError, OSError) as e:
        raise DataError(record_id, f"audio file {str(path)!r} is not readable audio: {e}", BAD_AUDIO) from None
    wav = wav.mean(axis=1)
    if wav.size == 0:
        raise DataError(record_id, f"audio file {str(path)!r} has no samples", BAD_AUDIO)
    if sr != sampling_rate:
        wav = resample(wav, sr, sampling_rate)
    return np.ascontiguousarray(wav, dtype=np.float32)


def resample(wav: np.ndarray, orig_sr: int, target_sr: int) -> np.ndarray:
    from scipy.signal import resample_poly  # scipy ships with scikit-learn, a dependency

    g = gcd(int(orig_sr), int(target_sr))
    return resample_poly(wav, target_sr // g, orig_sr // g).astype(np.float32)


class AudioFeaturizer:
    """Waveform → (n_mels, max_frames) log-mel features; one per spec, held by a processor."""

    def __init__(self, spec: AudioInputSpec, n_fft: int = 400):
        from transformers import WhisperFeatureExtractor

        self.spec = spec
        # chunk_length only sets the extractor's default window; we pass max_length explicitly
        # on every call so windows that are not whole seconds work too.
        self._fe = WhisperFeatureExtractor(
            feature_size=spec.n_mels,
            sampling_rate=spec.sampling_rate,
            hop_length=spec.hop_length,
            chunk_length=max(1, round(spec.max_seconds)),
            n_fft=n_fft,
        )
        self._max_samples = spec.max_frames * spec.hop_length

    def __call__(self, wav: np.ndarray, record_id: str = "?") -> torch.Tensor:
        if wav.shape[0] > self._max_samples:
            # No silent truncation: the placeholder would promise tokens the window cannot hold.
            raise DataError(
                record_id,
                f"audio clip is {wav.shape[0] / self.spec.sampling_rate:.2f} s, longer than the encoder's "
                f"{self.spec.max_seconds:.2f} s window (max_frames={self.spec.max_frames})",
                BAD_AUDIO,
            )
        feats = self._fe(
            wav,
            sampling_rate=self.spec.sampling_rate,
            padding="max_length",
            max_length=self._max_samples,
            truncation=False,
            return_tensors="np",
        )["input_features"][0]
        return torch.from_numpy(np.ascontiguousarray(feats, dtype=np.float32))

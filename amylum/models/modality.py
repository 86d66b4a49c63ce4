"""What the data path needs to know about an encoder, as plain data.

A processor expands every ``<image>`` / ``<audio>`` placeholder into exactly as many tokens
as the encoder + projector will produce for that item. That number is computed here from
the configs, never by running the encoder, so data can be prepared (and work estimated by
the planners) without a model in memory.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class ImageInputSpec:
    """An image encoder fed fixed-size ``pixel_values`` of shape (N, C, H, W)."""

    image_size: int
    tokens_per_item: int
    num_channels: int = 3
    mean: tuple[float, ...] = (0.5, 0.5, 0.5)
    std: tuple[float, ...] = (0.5, 0.5, 0.5)
    input_name: str = "pixel_values"
    placeholder: str = "<image>"
    kind: str = "image"

    def num_tokens(self, item_meta: object = None) -> int:
        return self.tokens_per_item


@dataclass(frozen=True)
class AudioInputSpec:
    """An audio encoder fed log-mel ``input_features`` of shape (N, n_mels, max_frames).

    Clips are padded to ``max_frames`` (Whisper's encoder requires its full window); only the
    first ``num_tokens(n_samples)`` output tokens of a clip are used, so a 2-second clip costs
    the LLM 2 seconds' worth of tokens, not 30.
    """

    sampling_rate: int = 16000
    n_mels: int = 80
    hop_length: int = 160
    max_frames: int = 3000
    frames_per_token: int = 2  # Whisper's strided conv halves the frame rate; a 1-D pooling projector multiplies this
    input_name: str = "input_features"
    placeholder: str = "<audio>"
    kind: str = "audio"

    @property
    def max_seconds(self) -> float:
        return self.max_frames * self.hop_length / self.sampling_rate

    @property
    def max_tokens(self) -> int:
        return self.max_frames // self.frames_per_token

    def num_tokens(self, num_samples: int) -> int:
        """Feature tokens for a clip of ``num_samples`` audio samples (at ``sampling_rate``)."""
        if num_samples <= 0:
            raise ValueError("an audio clip must have at least one sample")
        frames = min(max(1, num_samples // self.hop_length), self.max_frames)
        return max(1, math.ceil(frames / self.frames_per_token))


@dataclass(frozen=True)
class TensorInputSpec:
    """A custom ``nn.Module`` encoder fed a tensor the user prepares (shape (N, ...)).

    ``tokens_per_item`` is how many feature tokens one item yields after the projector;
    ``item_shape`` (one item's shape without the leading N) lets a rank with no item of this
    modality run the encoder on a zero input, so collectives stay in step.
    """

    tokens_per_item: int
    item_shape: tuple[int, ...] | None = None
    input_name: str = "inputs"
    placeholder: str = "<input>"
    kind: str = "tensor"

    def num_tokens(self, item_meta: object = None) -> int:
        return self.tokens_per_item


ModalityInputSpec = ImageInputSpec | AudioInputSpec | TensorInputSpec

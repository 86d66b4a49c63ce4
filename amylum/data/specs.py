"""Which loader a modality spec needs, by duck typing.

The data path never imports ``amylum.models`` at runtime: data workers should not pull in
the model stack, and the specs are plain dataclasses whose fields say what they need.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from amylum.models.modality import AudioInputSpec, ImageInputSpec, TensorInputSpec

    Spec = ImageInputSpec | AudioInputSpec | TensorInputSpec

Family = Literal["image", "audio", "tensor"]


def spec_family(spec: object) -> Family:
    """``"image"`` (has ``image_size``), ``"audio"`` (has ``n_mels``) or ``"tensor"``."""
    if hasattr(spec, "image_size"):
        return "image"
    if hasattr(spec, "n_mels") and hasattr(spec, "sampling_rate"):
        return "audio"
    if hasattr(spec, "tokens_per_item"):
        return "tensor"
    raise TypeError(f"not a modality input spec: {spec!r} (expected ImageInputSpec, AudioInputSpec or TensorInputSpec)")

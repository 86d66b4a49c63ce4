"""Images → ``pixel_values`` for an :class:`ImageInputSpec`, with Pillow and torch only.

No HF image processor is downloaded: resizing to ``spec.image_size`` (bicubic, square,
no crop — what SigLIP's processor does), rescaling to [0, 1] and normalising with the
spec's mean/std is all these encoders need.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from amylum.data.errors import CORRUPT_IMAGE, MISSING_FILE, UNREADABLE_FILE, DataError
if TYPE_CHECKING:
    from amylum.models.modality import ImageInputSpec


def load_image(path: str | Path, record_id: str = "?") -> Image.Image:
    """Open and fully decode an image (a truncated file fails here, not inside a worker later)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(record_id, f"image file {str(path)!r} does not exist", MISSING_FILE)
    try:
        with Image.open(path) as img:
            img.load()  # Image.open is lazy; load() is what detects corrupt/truncated data
            return img.copy()
    except UnidentifiedImageError:
        raise DataError(record_id, f"image file {str(path)!r} is not a readable image (corrupt or unknown format)",
                        CORRUPT_IMAGE) from None
    except PermissionError as e:
        raise DataError(record_id, f"image file {str(path)!r} cannot be read: {e}", UNREADABLE_FILE) from None
    except (OSError, SyntaxError, ValueError) as e:
        raise DataError(record_id, f"image file {str(path)!r} is corrupt: {e}", CORRUPT_IMAGE) from None


def image_to_pixels(img: Image.Image, spec: ImageInputSpec) -> torch.Tensor:
    """(C, H, W) float32, resized to the spec and normalised with its mean/std."""
    if spec.num_channels == 1:
        img = img.convert("L")
    elif spec.num_channels == 3:
        img = img.convert("RGB")
    else:
        raise ValueError(f"ImageInputSpec.num_channels must be 1 or 3 for image files, got {spec.num_channels}")
    size = spec.image_size
    if img.size != (size, size):
        img = img.resize((size, size), Image.Resampling.BICUBIC)
    arr = np.asarray(img, dtype=np.float32) / 255.0
    if arr.ndim == 2:
        arr = arr[:, :, None]
    x = torch.from_numpy(arr).permute(2, 0, 1).contiguous()
    if len(spec.mean) != spec.num_channels or len(spec.std) != spec.num_channels:
        raise ValueError(f"ImageInputSpec mean/std need {spec.num_channels} values, got {spec.mean} / {spec.std}")
    mean = torch.tensor(spec.mean, dtype=torch.float32).view(-1, 1, 1)
    std = torch.tensor(spec.std, dtype=torch.float32).view(-1, 1, 1)
    return (x - mean) / std


def load_pixels(path: str | Path, spec: ImageInputSpec, record_id: str = "?") -> torch.Tensor:
    return image_to_pixels(load_image(path, record_id), spec)

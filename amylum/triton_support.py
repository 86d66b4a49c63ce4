"""Whether Triton can run here: amylum's own kernels (AdamW, the loss's chunk kernel) need it on
CUDA, and its interpreter (``TRITON_INTERPRET=1``) runs them on CPU tensors for tests. Importing
amylum never needs Triton."""

from __future__ import annotations

import os


def triton_available() -> bool:
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def interpreting() -> bool:
    """Triton's interpreter (``TRITON_INTERPRET=1``) runs kernels on CPU tensors: for tests."""
    return os.environ.get("TRITON_INTERPRET") == "1"

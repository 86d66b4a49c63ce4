"""Training state that is not parameters: RNG states, and splitting nested state into JSON + tensors.

Checkpoints never pickle (a checkpoint folder may come from anywhere). Nested state such as a
scheduler's or a data loader's ``state_dict()`` is split into a JSON tree, where every tensor or
numpy array is replaced by a ``{"__tensor__": key}`` reference, and a flat ``{key: tensor}`` dict
that goes into safetensors with the model and optimizer.
"""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch

_TENSOR = "__tensor__"
_NDARRAY = "__ndarray__"
_TUPLE = "__tuple__"


def split_tensors(obj: Any, prefix: str) -> tuple[Any, dict[str, torch.Tensor]]:
    """``obj`` as a JSON-able tree plus the tensors it referenced, keyed ``prefix.path``."""
    tensors: dict[str, torch.Tensor] = {}

    def walk(x: Any, path: str) -> Any:
        if isinstance(x, torch.Tensor):
            tensors[path] = x.detach().cpu().contiguous()
            return {_TENSOR: path}
        if isinstance(x, np.ndarray):
            tensors[path] = torch.from_numpy(np.ascontiguousarray(x))
            return {_NDARRAY: path}
        if isinstance(x, dict):
            for k in x:
                if not isinstance(k, (str, int)):
                    raise TypeError(f"{path}: state dict key {k!r} is not a str or int")
            # JSON keys are strings; remember int keys so they come back as ints.
            return {("#" + str(k) if isinstance(k, int) else k): walk(v, f"{path}.{k}") for k, v in x.items()}
        if isinstance(x, tuple):
            return {_TUPLE: [walk(v, f"{path}.{i}") for i, v in enumerate(x)]}
        if isinstance(x, list):
            return [walk(v, f"{path}.{i}") for i, v in enumerate(x)]
        if isinstance(x, (np.integer, np.floating, np.bool_)):
            return x.item()
        if x is None or isinstance(x, (bool, int, float, str)):
            return x
        raise TypeError(f"{path}: cannot checkpoint a {type(x).__name__} without pickling it")

    return walk(obj, prefix), tensors


def join_tensors(tree: Any, tensors: dict[str, torch.Tensor]) -> Any:
    """Inverse of ``split_tensors``."""
    if isinstance(tree, dict):
        if _TENSOR in tree:
            return tensors[tree[_TENSOR]]
        if _NDARRAY in tree:
            return tensors[tree[_NDARRAY]].numpy()
        if _TUPLE in tree:
            return tuple(join_tensors(v, tensors) for v in tree[_TUPLE])
        return {(int(k[1:]) if k.startswith("#") else k): join_tensors(v, tensors) for k, v in tree.items()}
    if isinstance(tree, list):
        return [join_tensors(v, tensors) for v in tree]
    return tree


def rng_state() -> dict[str, Any]:
    """Every RNG a training step may draw from: Python, numpy, torch CPU and the current CUDA device."""
    np_state = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": {"keys": np_state[1], "pos": int(np_state[2]), "has_gauss": int(np_state[3]), "gauss": float(np_state[4])},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    n = state["numpy"]
    np.random.set_state(("MT19937", np.asarray(n["keys"], dtype=np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])

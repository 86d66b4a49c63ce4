"""Export a MultimodalLM as HF-loadable folders, and load such an export back.

Layout of ``OUT/``::

    amylum.json                  the composition: which folder is what, projector shapes, mask mode
    llm/                         the causal LM, ``save_pretrained`` (config.json + safetensors)
    encoders/<name>/             each HF encoder, ``save_pretrained``; a plain nn.Module encoder
                                 is saved as encoder.safetensors (its code is the user's)
    encoders/<name>/projector.safetensors   the projector weights

Every part is loadable on its own with transformers' ``from_pretrained``; ``load_export`` rebuilds
the whole model. Only JSON and safetensors are read back: nothing is unpickled. A LoRA-wrapped LLM
is merged into plain weights first, so the exported LLM needs no peft.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import os
from pathlib import Path
from typing import Any, Mapping

import torch
import transformers
from safetensors.torch import load_file, save_file
from torch import nn

from amylum.models import AudioInputSpec, ImageInputSpec, ModalityEncoder, MultimodalLM, Projector, TensorInputSpec

_SPECS = {cls.__name__: cls for cls in (ImageInputSpec, AudioInputSpec, TensorInputSpec)}

FORMAT = "amylum-export"
VERSION = 1


def _plain_llm(llm: nn.Module) -> nn.Module:
    """The LLM as a plain HF model: a peft wrapper is merged into a copy (the live model keeps training)."""
    if hasattr(llm, "merge_and_unload"):
        return copy.deepcopy(llm).merge_and_unload()
    return llm


def _projector_config(projector: nn.Module) -> dict[str, Any]:
    if not isinstance(projector, Projector):
        raise TypeError(f"cannot export a {type(projector).__name__} projector; only amylum Projector is supported")
    hidden = projector.proj[0].out_features if isinstance(projector.proj, nn.Sequential) else None
    r = projector.reducer
    return {
        "kind": projector.kind, "in_dim": projector.in_dim, "out_dim": projector.out_dim,
        "token_reduction": r.factor, "reduction_mode": r.mode, "grid": r.grid, "hidden_dim": hidden,
    }


def export_model(model: MultimodalLM, out_dir: str | Path) -> Path:
    """Write ``model`` to ``out_dir`` (created; existing files of the same names are replaced)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    llm = _plain_llm(model.llm)
    llm.save_pretrained(out / "llm")
    encoders: dict[str, Any] = {}
    for name, branch in model.encoders.items():
        folder = out / "encoders" / name
        folder.mkdir(parents=True, exist_ok=True)
        enc = branch.encoder
        if hasattr(enc, "save_pretrained") and hasattr(transformers, type(enc).__name__):
            enc.save_pretrained(folder)
            kind = {"hf_class": type(enc).__name__}
        else:
            save_file({k: v.contiguous() for k, v in enc.state_dict().items()}, str(folder / "encoder.safetensors"))
            kind = {"custom_class": f"{type(enc).__module__}.{type(enc).__qualname__}"}
        save_file({k: v.contiguous() for k, v in branch.projector.state_dict().items()}, str(folder / "projector.safetensors"))
        encoders[name] = {
            "path": f"encoders/{name}", **kind,
            "projector": _projector_config(branch.projector),
            "feature_layer": branch.feature_layer, "num_prefix_tokens": branch.num_prefix_tokens,
            "input_spec": {"type": type(branch.input_spec).__name__, **dataclasses.asdict(branch.input_spec)},
        }
    manifest = {
        "format": FORMAT, "version": VERSION, "llm": {"path": "llm", "hf_class": type(llm).__name__},
        "encoders": encoders, "mask_mode": model.mask_mode,
    }
    tmp = out / "amylum.json.tmp"
    tmp.write_text(json.dumps(manifest, indent=2))
    os.replace(tmp, out / "amylum.json")  # the manifest appears only once every part is written
    return out


def _hf_class(name: str) -> type:
    """A transformers model class by name: only classes transformers itself exports, never arbitrary code."""
    cls = getattr(transformers, name, None)
    if not (isinstance(cls, type) and issubclass(cls, transformers.PreTrainedModel)):
        raise ValueError(f"export names model class {name!r}, which is not a transformers PreTrainedModel")
    return cls


def load_export(
    path: str | Path,
    *,
    custom_encoders: Mapping[str, nn.Module] | None = None,
    attention_backend: str = "reference",
    dtype: torch.dtype | None = None,
) -> MultimodalLM:
    """Rebuild a MultimodalLM from ``export_model``'s folder (local files only).

    ``custom_encoders``: for encoders exported from plain ``nn.Module``s, a freshly built module of
    the same architecture per name; its weights are loaded from the export.
    """
    root = Path(path)
    manifest_path = root / "amylum.json"
    if not manifest_path.is_file():
        raise FileNotFoundError(f"{root} is not an amylum export (no amylum.json)")
    manifest = json.loads(manifest_path.read_text())
    if manifest.get("format") != FORMAT or manifest.get("version") != VERSION:
        raise ValueError(f"{manifest_path}: unsupported export format {manifest.get('format')} v{manifest.get('version')}")
    llm = transformers.AutoModelForCausalLM.from_pretrained(root / manifest["llm"]["path"], dtype=dtype, local_files_only=True)
    encoders = {}
    for name, spec in manifest["encoders"].items():
        folder = root / spec["path"]
        if "hf_class" in spec:
            encoder = _hf_class(spec["hf_class"]).from_pretrained(folder, dtype=dtype, local_files_only=True)
        else:
            if not custom_encoders or name not in custom_encoders:
                raise ValueError(
                    f"encoder {name!r} was a custom nn.Module ({spec['custom_class']}); pass custom_encoders={{{name!r}: module}}"
                )
            encoder = custom_encoders[name]
            encoder.load_state_dict(load_file(str(folder / "encoder.safetensors")))
        p = spec["projector"]
        projector = Projector(
            p["kind"], p["in_dim"], p["out_dim"], token_reduction=p["token_reduction"],
            reduction_mode=p["reduction_mode"], grid=p["grid"], hidden_dim=p["hidden_dim"],
        )
        projector.load_state_dict(load_file(str(folder / "projector.safetensors")))
        if dtype is not None:
            projector.to(dtype)
        fields = dict(spec["input_spec"])
        spec_cls = _SPECS[fields.pop("type")]
        input_spec = spec_cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in fields.items()})
        encoders[name] = ModalityEncoder(
            encoder, projector, input_spec=input_spec,
            feature_layer=spec["feature_layer"], num_prefix_tokens=spec["num_prefix_tokens"],
        )
    return MultimodalLM(llm, encoders, attention_backend=attention_backend, mask_mode=manifest["mask_mode"])

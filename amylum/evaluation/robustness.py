"""Robustness pass: the same items with perturbed inputs, scored beside the clean run.

Perturbed media are written once per evaluator into its work folder and the records point at
them, so the data path is the training one, untouched, and every evaluation reuses the same
perturbed files (deterministic: seeded by the suite's seed and the record id, never by Python's
salted ``hash``). A perturbation only changes the records that have what it perturbs; results
compare clean and perturbed scores on exactly those records.
"""

from __future__ import annotations

import dataclasses
import zlib
from pathlib import Path
from typing import Any

import numpy as np

from amylum.data.records import Record, Turn

_DEFAULTS: dict[str, dict[str, Any]] = {
    "image_noise": {"std": 0.1},  # Gaussian noise, in units of the full pixel range
    "image_blur": {"radius": 1.0},  # Gaussian blur radius in pixels of the stored image
    "image_crop": {"keep": 0.8},  # random crop keeping this fraction of each side, resized back
    "audio_noise": {"snr_db": 10.0},  # white noise at this signal-to-noise ratio
    "paraphrase": {"templates": None},  # None → config.DEFAULT_PARAPHRASES
}


def check_options(kind: str, table: dict[str, Any]) -> dict[str, Any]:
    """Options of one perturbation with defaults filled in; raises ValueError on bad ones."""
    defaults = _DEFAULTS[kind]
    unknown = set(table) - set(defaults)
    if unknown:
        raise ValueError(f"unknown option(s) {sorted(unknown)} for {kind}; known: {', '.join(defaults) or 'none'}")
    opts = {**defaults, **table}
    if kind == "paraphrase":
        from amylum.evaluation.config import DEFAULT_PARAPHRASES

        templates = opts["templates"] if opts["templates"] is not None else list(DEFAULT_PARAPHRASES)
        if not templates or not all(isinstance(t, str) and "{prompt}" in t for t in templates):
            raise ValueError(f"paraphrase templates must be strings containing {{prompt}}, got {templates!r}")
        opts["templates"] = list(templates)
    else:
        for key, value in opts.items():
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ValueError(f"{kind}.{key} must be a number, got {value!r}")
            opts[key] = float(value)
    if kind == "image_crop" and not 0 < opts["keep"] <= 1:
        raise ValueError(f"image_crop.keep must be in (0, 1], got {opts['keep']}")
    if kind in ("image_noise", "image_blur") and min(opts.values()) < 0:
        raise ValueError(f"{kind} options must be >= 0, got {opts}")
    return opts


def _rng(seed: int, record_id: str, k: int) -> np.random.Generator:
    return np.random.default_rng([seed, zlib.crc32(record_id.encode()), k])


def perturb_image(img, kind: str, opts: dict[str, Any], rng: np.random.Generator):
    from PIL import Image, ImageFilter

    if img.mode not in ("L", "RGB"):  # palette / alpha images: perturb what the processor will see
        img = img.convert("RGB")
    if kind == "image_blur":
        return img.filter(ImageFilter.GaussianBlur(opts["radius"]))
    if kind == "image_crop":
        w, h = img.size
        cw, ch = max(1, round(w * opts["keep"])), max(1, round(h * opts["keep"]))
        x, y = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
        return img.crop((x, y, x + cw, y + ch)).resize((w, h), Image.Resampling.BICUBIC)
    if kind == "image_noise":
        arr = np.asarray(img, dtype=np.float32) / 255.0
        arr = np.clip(arr + rng.normal(0.0, opts["std"], arr.shape), 0.0, 1.0)
        return Image.fromarray((arr * 255.0 + 0.5).astype(np.uint8), mode=img.mode)
    raise ValueError(f"{kind} is not an image perturbation")


def perturb_audio(wav: np.ndarray, snr_db: float, rng: np.random.Generator) -> np.ndarray:
    power = float(np.mean(wav.astype(np.float64) ** 2)) or 1e-12
    noise = rng.normal(0.0, np.sqrt(power / 10 ** (snr_db / 10)), wav.shape)
    return np.clip(wav + noise, -1.0, 1.0).astype(np.float32)


def paraphrase_turns(turns: list[Turn], template: str) -> list[Turn]:
    """Apply ``template`` to the last user turn (the question being answered)."""
    idx = max(i for i, t in enumerate(turns) if t.role == "user")
    out = list(turns)
    out[idx] = Turn("user", template.replace("{prompt}", turns[idx].text))
    return out


def perturb_record(record: Record, kind: str, name: str, opts: dict[str, Any], media_root: Path,
                   work_dir: Path, seed: int) -> Record | None:
    """The perturbed record (media written under ``work_dir``), or None if nothing applies to it."""
    if kind == "paraphrase":
        templates = opts["templates"]
        template = templates[zlib.crc32(f"{seed}:{record.id}".encode()) % len(templates)]
        if template == "{prompt}":  # the identity template leaves this record as it is
            return None
        return dataclasses.replace(record, turns=paraphrase_turns(record.turns, template))
    media_kind = "audio" if kind == "audio_noise" else "image"
    paths = record.media.get(media_kind)
    if not paths:
        return None
    out_dir = work_dir / name
    out_dir.mkdir(parents=True, exist_ok=True)
    safe_id = "".join(c if c.isalnum() or c in "-_" else "_" for c in record.id)
    new_paths = []
    for k, p in enumerate(paths):
        src = Path(p) if Path(p).is_absolute() else media_root / p
        rng = _rng(seed, record.id, k)
        if media_kind == "image":
            from amylum.data.image import load_image

            dst = out_dir / f"{safe_id}_{k}.png"
            perturb_image(load_image(src, record.id), kind, opts, rng).save(dst)
        else:
            import soundfile as sf

            wav, sr = sf.read(src, dtype="float32", always_2d=False)
            dst = out_dir / f"{safe_id}_{k}.wav"
            sf.write(dst, perturb_audio(wav, opts["snr_db"], rng), sr, subtype="PCM_16")
        new_paths.append(str(dst.resolve()))
    return dataclasses.replace(record, media={**record.media, media_kind: new_paths})

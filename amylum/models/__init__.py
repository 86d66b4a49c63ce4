"""Model composition: encoders + projectors + one HF causal LM, freezing, presets."""

from amylum.models.encoder import ModalityEncoder
from amylum.models.freeze import BranchFreeze, FreezeSpec, LoraSpec, apply_freeze
from amylum.models.modality import AudioInputSpec, ImageInputSpec, ModalityInputSpec, TensorInputSpec
from amylum.models.multimodal_lm import MultimodalLM, MultimodalOutput
from amylum.models.presets import PRESETS, build_from_parts, build_preset, list_presets, preset_configs
from amylum.models.projector import Projector, build_projector

__all__ = [
    "AudioInputSpec",
    "BranchFreeze",
    "FreezeSpec",
    "ImageInputSpec",
    "LoraSpec",
    "ModalityEncoder",
    "ModalityInputSpec",
    "MultimodalLM",
    "MultimodalOutput",
    "PRESETS",
    "Projector",
    "TensorInputSpec",
    "apply_freeze",
    "build_from_parts",
    "build_preset",
    "build_projector",
    "list_presets",
    "preset_configs",
]

"""One modality branch: an encoder (any HF vision/audio model or a plain nn.Module) and its projector.

The branch knows, from configs alone, how many LLM tokens one item (image, clip) becomes;
the data path uses that to expand placeholders (see ``models/modality.py``).
"""

from __future__ import annotations

import torch
from torch import nn

from amylum.models.modality import AudioInputSpec, ImageInputSpec, ModalityInputSpec, TensorInputSpec
from amylum.models.projector import Projector, build_projector

# Normalisation the vision families were trained with; a fact about each checkpoint family.
_IMAGE_STATS = {
    "clip_vision_model": ((0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)),
    "siglip_vision_model": ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
    "vit": ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
}
# Families whose sequence starts with a [CLS] token that is not part of the patch grid.
_PREFIX_TOKENS = {"clip_vision_model": 1, "vit": 1, "dinov2": 1, "deit": 2}


def _unwrap_audio_encoder(encoder: nn.Module) -> nn.Module:
    """Accept a whole Whisper model and keep only its encoder (the decoder is never used)."""
    config = getattr(encoder, "config", None)
    if getattr(config, "model_type", None) == "whisper" and hasattr(encoder, "get_encoder"):
        return encoder.get_encoder()
    return encoder


def _encoder_hidden_size(encoder: nn.Module) -> int | None:
    config = getattr(encoder, "config", None)
    for attr in ("hidden_size", "d_model"):
        if config is not None and isinstance(getattr(config, attr, None), int):
            return getattr(config, attr)
    return None


def _infer_input_spec(encoder: nn.Module, projector: Projector | None, num_prefix_tokens: int | None) -> ModalityInputSpec:
    config = getattr(encoder, "config", None)
    model_type = getattr(config, "model_type", None)
    reduce = projector.reducer.token_divisor() if projector is not None else 1
    if model_type == "whisper":
        spec = AudioInputSpec(
            n_mels=config.num_mel_bins,
            max_frames=2 * config.max_source_positions,
            frames_per_token=2 * reduce,
        )
        if (config.max_source_positions % reduce) != 0:
            raise ValueError(
                f"audio projector token_reduction {reduce} must divide the encoder's {config.max_source_positions} positions"
            )
        return spec
    if config is not None and hasattr(config, "image_size") and hasattr(config, "patch_size"):
        image_size = config.image_size if isinstance(config.image_size, int) else config.image_size[0]
        patch = config.patch_size if isinstance(config.patch_size, int) else config.patch_size[0]
        grid = (image_size // patch) ** 2
        prefix = _PREFIX_TOKENS.get(model_type, 0) if num_prefix_tokens is None else num_prefix_tokens
        tokens = projector.num_output_tokens(grid) if projector is not None else grid
        mean, std = _IMAGE_STATS.get(model_type, ((0.5,) * 3, (0.5,) * 3))
        channels = getattr(config, "num_channels", 3)
        del prefix  # prefix tokens are dropped before projection, so they never reach the LLM
        return ImageInputSpec(
            image_size=image_size, tokens_per_item=tokens, num_channels=channels, mean=mean[:channels], std=std[:channels]
        )
    raise ValueError(
        f"cannot infer the input spec of encoder {type(encoder).__name__}: pass input_spec= "
        "(ImageInputSpec / AudioInputSpec / TensorInputSpec) for custom encoders"
    )


class ModalityEncoder(nn.Module):
    """Encoder + projector for one modality; ``forward(**inputs) -> (N, T, H_llm)``.

    ``encoder`` may be an HF model (SigLIP, CLIP, ViT, Whisper, …) or any ``nn.Module``
    whose output is a tensor ``(N, T, H)`` or has ``last_hidden_state``.
    """

    def __init__(
        self,
        encoder: nn.Module,
        projector: nn.Module,
        *,
        input_spec: ModalityInputSpec | None = None,
        feature_layer: int = -1,
        num_prefix_tokens: int | None = None,
    ) -> None:
        super().__init__()
        self.encoder = _unwrap_audio_encoder(encoder)
        self.projector = projector
        self.feature_layer = feature_layer
        self.output_in_graph_pool = False  # set by compile_blocks(frozen_graphs=True)
        model_type = getattr(getattr(self.encoder, "config", None), "model_type", None)
        self.num_prefix_tokens = _PREFIX_TOKENS.get(model_type, 0) if num_prefix_tokens is None else num_prefix_tokens
        if input_spec is None:
            input_spec = _infer_input_spec(self.encoder, projector if isinstance(projector, Projector) else None, num_prefix_tokens)
        self.input_spec = input_spec
        enc_h = _encoder_hidden_size(self.encoder)
        if enc_h is not None and isinstance(projector, Projector) and projector.in_dim != enc_h:
            raise ValueError(
                f"projector input width {projector.in_dim} does not match the encoder's hidden size {enc_h} "
                f"({type(self.encoder).__name__})"
            )

    @classmethod
    def build(
        cls,
        encoder: nn.Module,
        llm_hidden_size: int,
        *,
        projector: str = "mlp",
        token_reduction: int = 1,
        reduction_mode: str = "shuffle",
        encoder_hidden_size: int | None = None,
        input_spec: ModalityInputSpec | None = None,
        feature_layer: int = -1,
        num_prefix_tokens: int | None = None,
    ) -> "ModalityEncoder":
        """Build the projector from names and sizes, checking them against the encoder."""
        encoder = _unwrap_audio_encoder(encoder)
        enc_h = _encoder_hidden_size(encoder)
        if enc_h is None:
            enc_h = encoder_hidden_size
        elif encoder_hidden_size is not None and encoder_hidden_size != enc_h:
            raise ValueError(f"encoder_hidden_size={encoder_hidden_size} but the encoder's config says {enc_h}")
        if enc_h is None:
            raise ValueError(f"{type(encoder).__name__} has no config; pass encoder_hidden_size=")
        is_audio = getattr(getattr(encoder, "config", None), "model_type", None) == "whisper"
        grid = not is_audio and not isinstance(input_spec, (AudioInputSpec, TensorInputSpec))
        proj = build_projector(
            projector, enc_h, llm_hidden_size, token_reduction=token_reduction, reduction_mode=reduction_mode, grid=grid
        )
        return cls(encoder, proj, input_spec=input_spec, feature_layer=feature_layer, num_prefix_tokens=num_prefix_tokens)

    # -- state ---------------------------------------------------------------------------
    def encoder_trainable(self) -> bool:
        return any(p.requires_grad for p in self.encoder.parameters())

    def _param_dtype(self) -> torch.dtype:
        for p in self.encoder.parameters():
            return p.dtype
        return torch.float32

    def dummy_inputs(self, device: torch.device) -> dict[str, torch.Tensor]:
        """A one-item input of the right shape, for steps where a rank has no item of this modality.

        Running the encoder anyway (and multiplying its output by zero) keeps every rank's
        collectives in step (DESIGN §4.4).
        """
        spec, dtype = self.input_spec, self._param_dtype()
        if isinstance(spec, ImageInputSpec):
            shape = (1, spec.num_channels, spec.image_size, spec.image_size)
        elif isinstance(spec, AudioInputSpec):
            shape = (1, spec.n_mels, spec.max_frames)
        else:
            item_shape = spec.item_shape
            if item_shape is None:
                raise ValueError("a TensorInputSpec needs item_shape to build a dummy input for an idle step")
            shape = (1, *item_shape)
        return {spec.input_name: torch.zeros(shape, device=device, dtype=dtype)}

    # -- compute -------------------------------------------------------------------------
    def encode(self, **inputs: torch.Tensor) -> torch.Tensor:
        dtype = self._param_dtype()
        inputs = {k: (v.to(dtype) if v.is_floating_point() else v) for k, v in inputs.items()}
        # A frozen encoder keeps no activations for backward: nothing upstream of it trains.
        with torch.set_grad_enabled(torch.is_grad_enabled() and self.encoder_trainable()):
            if self.feature_layer == -1:
                out = self.encoder(**inputs)
                feats = out if isinstance(out, torch.Tensor) else out.last_hidden_state
            else:
                out = self.encoder(**inputs, output_hidden_states=True)
                feats = out.hidden_states[self.feature_layer]
        if feats.dim() != 3:
            raise ValueError(f"encoder {type(self.encoder).__name__} returned shape {tuple(feats.shape)}, expected (N, T, H)")
        if self.output_in_graph_pool:
            # The encoder replays as a CUDA graph (parallel.blocks.compile_blocks), whose output
            # the next replay overwrites; the projector keeps its input for backward.
            feats = feats.clone()
        if self.num_prefix_tokens:
            feats = feats[:, self.num_prefix_tokens :]
        return feats

    def forward(self, **inputs: torch.Tensor) -> torch.Tensor:
        return self.projector(self.encode(**inputs))

"""WorkCoefficients from the planner's one cost model, for a preset of the planner grid or for a
built model (``MultimodalLM``, real, CPU or meta-device parameters).

Both probe the cost model on the model's layers at one item per modality and three LLM lengths:
LLM time is exactly quadratic in the sequence length there, so three points recover the
per-token and attention terms. Freezing is taken into account (a frozen encoder with nothing
trainable upstream runs forward only); per-kind rates come from ``profile`` when one is passed.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import replace

import numpy as np

from .work_model import WorkCoefficients

PROBE_TEXT_TOKENS = (256, 1024, 4096)


def _no_overhead(cluster):
    # per-sample work excludes per-action launch overhead: that is paid per microbatch, not per sample
    return replace(cluster, gpu=replace(cluster.gpu, layer_overhead_s=0.0))


def _fit(spec_at: Callable[[int], object], cluster, profile, checkpointing: bool, mask: str) -> WorkCoefficients:
    """Coefficients from ModelSpecs with one item per branch at the probe text lengths."""
    from .cost import CostModel, grad_needs
    from .spec import ClusterSpec

    cm = CostModel(_no_overhead(cluster or ClusterSpec.of(8)), profile, checkpointing=checkpointing)
    probes = [spec_at(t) for t in PROBE_TEXT_TOKENS]
    needs = grad_needs(probes[0])
    per_item: dict[str, float] = {}
    per_token: dict[str, float] = {}
    for br in probes[0].branches:
        enc = [l for l in br.layers if l.module.endswith(".encoder")]
        proj = [l for l in br.layers if not l.module.endswith(".encoder")]
        per_item[br.name] = cm.stage_cost(enc, needs, 1, 1).total if enc else 0.0
        out_tokens = proj[-1].tokens if proj else 1
        per_token[br.name] = (cm.stage_cost(proj, needs, 1, 1).total / out_tokens) if proj else 0.0
    seq = np.array([p.llm[1].tokens for p in probes], dtype=np.float64)
    times = np.array([cm.stage_cost(list(p.llm), grad_needs(p), 1, 1).total for p in probes])
    c2, c1, _c0 = np.linalg.solve(np.vander(seq, 3), times)
    # the cost model counts causal attention as seq²/2 (query, key) pairs, so one pair costs 2·c2
    return WorkCoefficients(per_item, per_token, llm_per_token=max(float(c1), 0.0),
                            llm_per_mask_entry=max(2 * float(c2), 0.0), mask=mask)


def coefficients_from_preset(name: str, cluster=None, scenario: str = "all_trainable", profile=None,
                             checkpointing: bool = False, mask: str = "multimodal",
                             tokens_per_item: Mapping[str, int] | None = None) -> WorkCoefficients:
    """Coefficients of a planner-grid preset (``VLM-small``, …) under a freezing ``scenario``.

    ``tokens_per_item`` overrides a branch's tokens per item (e.g. one 384² SigLIP tile = 729).
    """
    from .configs import EncoderInput, model_spec_from_configs
    from .presets import preset_configs
    from .spec import freeze

    llm_cfg, encs = preset_configs(name)
    overrides = dict(tokens_per_item or {})
    unknown = sorted(set(overrides) - set(encs))
    if unknown:
        raise ValueError(f"preset {name} has no branch {unknown}; branches: {sorted(encs)}")
    one = {b: EncoderInput(e.config, items=1, tokens_per_item=overrides.get(b, e.tokens_per_item), merge=e.merge)
           for b, e in encs.items()}
    return _fit(lambda text: freeze(model_spec_from_configs(name, llm_cfg, one, text_tokens=text), scenario),
                cluster, profile, checkpointing, mask)


def coefficients_from_model(model, cluster=None, profile=None, checkpointing: bool = False,
                            mask: str = "multimodal") -> WorkCoefficients:
    """Coefficients of a built model, frozen-aware through its parameters' ``requires_grad``.

    Call it before the model is wrapped for parallelism: it reads ``model.llm`` and
    ``model.encoders[name].encoder/.projector`` (see :func:`amylum.planner.module.model_spec_from_module`).
    """
    from .module import model_spec_from_module

    items = {name: 1 for name in model.encoders.keys()}
    return _fit(lambda text: model_spec_from_module(model, text_tokens=text, items=items),
                cluster, profile, checkpointing, mask)

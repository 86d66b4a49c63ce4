"""Cost of one transformer layer per allowed attention entry and per token, for CP balancing.

The weights a CP policy balances (``cp_balance``): attention work grows with the mask's allowed
entries, the rest of the layer with the tokens a rank holds. Times come from the planner's
cost model (``layers.transformer_layer`` FLOPs over a profile's or the GPU's rate).
"""

from __future__ import annotations

from dataclasses import dataclass

from .layers import transformer_layer
from .spec import ClusterSpec


@dataclass(frozen=True)
class CPWorkModel:
    """Cost of one transformer layer per allowed attention entry and per token (any time unit).

    ``attn_entry_*``: one (query, key) pair of the mask, QKᵀ and PV for all heads.
    ``token_*``: everything else of the layer per token (projections, MLP, norms).
    Backward of attention is ≈ 2× its forward (dQ, dK, dV; the cost model's convention, flash
    adds a recompute of the scores that a GPU profile folds into the rate); backward of a
    linear layer is 1× for the input gradient plus 1× for the weight gradient if trained.
    """

    attn_entry_fwd: float = 1.0
    attn_entry_bwd: float = 2.0
    token_fwd: float = 0.0
    token_bwd: float = 0.0

    @property
    def per_entry(self) -> float:
        return self.attn_entry_fwd + self.attn_entry_bwd

    @property
    def per_token(self) -> float:
        return self.token_fwd + self.token_bwd

    @classmethod
    def attention_only(cls) -> "CPWorkModel":
        """Cornstarch's weighting: attention entries only, no per-token term."""
        return cls(1.0, 2.0, 0.0, 0.0)

    @classmethod
    def from_shape(cls, *, hidden: int, heads: int, kv_heads: int, head_dim: int | None = None, ffn: int,
                   gated: bool = True, cluster: ClusterSpec | None = None, profile=None, kind: str = "llm.decoder",
                   trainable: bool = True, attn_rate: float | None = None) -> "CPWorkModel":
        """Seconds per entry / token of an LLM decoder layer, from the planner's cost model.

        FLOPs come from ``planner.layers.transformer_layer``; rates from ``profile`` (measured on
        the GPU type) or the GPU type's nominal efficiency. ``attn_rate`` overrides the attention
        FLOP rate (masked attention reaches a different rate than GEMMs; ``bench/gpu_cp_attention.py``
        measures it).
        """
        head_dim = head_dim or hidden // heads
        one = transformer_layer("cp", "llm", kind, hidden=hidden, heads=heads, kv_heads=kv_heads, head_dim=head_dim,
                                ffn=ffn, seq=1, tokens=1, causal=False, gated=gated)
        linear = one.wgrad_flops
        entry = one.fwd_flops - linear  # 4·heads·head_dim FLOPs per (query, key) pair
        cluster = cluster or ClusterSpec.of(8)

        def rate(what: str) -> float:
            r = profile.rate(kind, what) if profile is not None else None
            return r if r else cluster.gpu.peak_flops * cluster.gpu.efficiency

        a_rate = attn_rate or rate("fwd")
        token_bwd = linear / rate("igrad") + (linear / rate("wgrad") if trainable else 0.0)
        return cls(entry / a_rate, 2 * entry / (attn_rate or rate("igrad")), linear / rate("fwd"), token_bwd)


def default_work_model() -> CPWorkModel:
    """A Llama-3-8B-shaped decoder layer, trained, at the H100's nominal rate (uncalibrated)."""
    return CPWorkModel.from_shape(hidden=4096, heads=32, kv_heads=8, ffn=14336)

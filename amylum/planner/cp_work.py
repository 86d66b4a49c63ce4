"""Cost of one transformer layer per allowed attention entry and per token, for CP balancing.

The weights a CP policy balances (``cp_balance``): attention work grows with the mask's allowed
entries, the rest of the layer with the tokens a rank holds. Times come from the planner's
cost model (``layers.transformer_layer`` FLOPs over a profile's or the GPU's rate).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, replace
from pathlib import Path

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
    # The attention kernel's own cost (fwd + bwd), fitted on a GPU (``bench/gpu_cp_attention.py``):
    # a block-sparse kernel visits the ``tile``×``tile`` (query, key) tiles its block mask marks,
    # skips empty ones, and evaluates the mask only inside partial ones; each query tile and
    # each rank's call cost a fixed amount on top. Entries alone mispredict sparse masks
    # (packed rows: many partial tiles, few entries each). When set, these replace the
    # per-entry attention terms.
    attn_partial_tile: float = 0.0
    attn_full_tile: float = 0.0
    attn_query_tile: float = 0.0
    rank_overhead: float = 0.0  # per rank and layer call (launches, kernel prologues)
    # per key tile of the K/V a rank attends over, per call: the dK/dV kernel runs one program
    # per key tile (and writes its gradient) whether or not any of the rank's queries see it
    attn_key_tile: float = 0.0
    # per query tile on the rank's most-visited key tile: the dK/dV kernel runs a program per
    # key tile that loops over the query tiles seeing it, so when a rank's queries are
    # contiguous under a sparse mask, few long programs carry all the work and the longest
    # one sets the kernel's time (scattered blocks spread it over many short programs)
    attn_key_visits: float = 0.0
    tile: int = 128

    @property
    def per_entry(self) -> float:
        return self.attn_entry_fwd + self.attn_entry_bwd

    @property
    def per_token(self) -> float:
        return self.token_fwd + self.token_bwd

    @property
    def tiled(self) -> bool:
        """Attention costed per kernel tile (a GPU fit) rather than per allowed entry."""
        return (self.attn_partial_tile, self.attn_full_tile, self.attn_query_tile) != (0.0, 0.0, 0.0)

    def with_kernel_fit(self, fit: "AttentionKernelFit") -> "CPWorkModel":
        """This layer with its attention costed by ``fit`` (same time unit: seconds)."""
        return replace(self, attn_partial_tile=fit.partial_tile, attn_full_tile=fit.full_tile,
                       attn_query_tile=fit.query_tile, rank_overhead=fit.rank_overhead,
                       attn_key_tile=fit.key_tile, attn_key_visits=fit.key_visits, tile=fit.tile)

    def call_overhead(self, kv_len: int) -> float:
        """A rank's fixed cost per layer call over ``kv_len`` keys (zero without a kernel fit)."""
        return self.rank_overhead + self.attn_key_tile * -(-kv_len // self.tile)

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


@dataclass(frozen=True)
class AttentionKernelFit:
    """Seconds (fwd + bwd, one layer) of a block-sparse attention kernel per partial tile, full
    tile, query tile, rank call, key tile of the K/V, and query tile on the most-visited key
    tile; fitted on one GPU for one head shape (``CPWorkModel``'s fields say why each)."""

    partial_tile: float
    full_tile: float
    query_tile: float
    rank_overhead: float
    key_tile: float = 0.0
    key_visits: float = 0.0
    tile: int = 128
    device: str = ""
    heads: str = ""  # e.g. "32/8x128": query heads / KV heads × head dim

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(asdict(self), indent=2) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> "AttentionKernelFit":
        data = json.loads(Path(path).read_text())
        unknown = set(data) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(f"{path}: unknown attention-kernel fit fields {sorted(unknown)}")
        return cls(**data)


def default_work_model() -> CPWorkModel:
    """A Llama-3-8B-shaped decoder layer, trained, at the H100's nominal rate (uncalibrated)."""
    return CPWorkModel.from_shape(hidden=4096, heads=32, kv_heads=8, ffn=14336)

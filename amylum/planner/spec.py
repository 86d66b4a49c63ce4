"""Plain descriptions the planners work on: layers, models, GPUs, clusters.

Everything here is a frozen dataclass of numbers and names, so a spec can be written to a
plan file, compared in a test and planned for 10,000 GPUs without torch. Per-layer figures are
per token and per sample (not per microbatch): the cost model multiplies by microbatch size.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace

DTYPE_BYTES = 2  # bf16 weights and activations throughout


@dataclass(frozen=True)
class LayerSpec:
    """One pipeline-splittable layer.

    ``fwd_flops``/``igrad_flops``/``wgrad_flops`` are per token: forward, input-gradient and
    weight-gradient work. They are separate because a frozen layer skips the weight gradient and
    a layer with nothing trainable upstream skips the input gradient.
    ``act_bytes`` is what must stay alive per token from forward to backward when the weight
    gradient is needed; ``act_bytes_igrad`` when only the input gradient is (a linear layer's
    input is needed for dW = xᵀ·dY but not for dX = dY·Wᵀ).
    """

    name: str
    module: str  # "llm", "<branch>.encoder", "<branch>.projector"
    kind: str  # profile key, e.g. "llama.decoder", "vit.layer", "whisper.layer"
    params: int
    tokens: int  # tokens per sample this layer processes
    hidden: int  # width of the residual stream (TP all-reduce size per token)
    fwd_flops: float
    igrad_flops: float
    wgrad_flops: float
    act_bytes: float
    act_bytes_igrad: float
    out_bytes: float  # bytes per sample of the output handed to the next layer
    trainable: bool = True
    kv_bytes: float = 0.0  # K and V per token (all KV heads): what context parallelism exchanges; 0: not attention

    def __post_init__(self) -> None:
        for f in ("params", "tokens", "hidden", "fwd_flops", "igrad_flops", "wgrad_flops",
                  "act_bytes", "act_bytes_igrad", "out_bytes", "kv_bytes"):
            if getattr(self, f) < 0:
                raise ValueError(f"layer {self.name}: {f} must be >= 0, got {getattr(self, f)}")


@dataclass(frozen=True)
class BranchSpec:
    """A modality branch: encoder layers then projector layers, feeding the LLM."""

    name: str
    layers: tuple[LayerSpec, ...]


@dataclass(frozen=True)
class ModelSpec:
    """A multimodal model as chains of layers.

    ``merge_index`` is the index of the first LLM layer that consumes modality features
    (after the token embedding, where features are scattered into the placeholders).
    """

    name: str
    llm: tuple[LayerSpec, ...]
    branches: tuple[BranchSpec, ...] = ()
    merge_index: int = 1

    def __post_init__(self) -> None:
        names = [l.name for l in self.all_layers()]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"model {self.name}: duplicated layer names {dup[:5]}")
        if not self.llm:
            raise ValueError(f"model {self.name}: the LLM has no layers")
        if not 0 <= self.merge_index < len(self.llm):
            raise ValueError(f"model {self.name}: merge_index {self.merge_index} outside the LLM's layers")

    def all_layers(self) -> list[LayerSpec]:
        out = [l for b in self.branches for l in b.layers]
        out.extend(self.llm)
        return out

    def chain(self, name: str) -> tuple[LayerSpec, ...]:
        if name == "llm":
            return self.llm
        for b in self.branches:
            if b.name == name:
                return b.layers
        raise KeyError(f"model {self.name} has no chain {name!r}; chains: {self.chain_names()}")

    def chain_names(self) -> list[str]:
        return [b.name for b in self.branches] + ["llm"]

    def modules(self) -> list[str]:
        seen: list[str] = []
        for l in self.all_layers():
            if l.module not in seen:
                seen.append(l.module)
        return seen

    def with_trainable(self, trainable: dict[str, bool]) -> "ModelSpec":
        """A copy with each named module's layers set trainable or frozen."""
        unknown = sorted(set(trainable) - set(self.modules()))
        if unknown:
            raise ValueError(f"unknown modules {unknown}; modules: {self.modules()}")

        def fix(layers):
            return tuple(replace(l, trainable=trainable.get(l.module, l.trainable)) for l in layers)

        return replace(self, llm=fix(self.llm),
                       branches=tuple(replace(b, layers=fix(b.layers)) for b in self.branches))

    def to_dict(self) -> dict:
        return asdict(self)

    @staticmethod
    def from_dict(d: dict) -> "ModelSpec":
        return ModelSpec(
            name=d["name"],
            llm=tuple(LayerSpec(**l) for l in d["llm"]),
            branches=tuple(BranchSpec(b["name"], tuple(LayerSpec(**l) for l in b["layers"]))
                           for b in d.get("branches", ())),
            merge_index=d.get("merge_index", 1),
        )


FREEZING_SCENARIOS = ("projector_only", "frozen_encoders", "all_trainable")


def freeze(model: ModelSpec, scenario: str) -> ModelSpec:
    """Apply one of the benchmark's freezing scenarios.

    projector_only: encoders and LLM frozen, projectors trained (LLaVA stage 1, Cornstarch's PP runs);
    frozen_encoders: encoders frozen, projectors and LLM trained; all_trainable: everything trained.
    """
    if scenario not in FREEZING_SCENARIOS:
        raise ValueError(f"unknown freezing scenario {scenario!r}; choose from {FREEZING_SCENARIOS}")
    flags = {}
    for m in model.modules():
        if m.endswith(".projector"):
            flags[m] = True
        elif m == "llm":
            flags[m] = scenario != "projector_only"
        else:
            flags[m] = scenario == "all_trainable"
    return model.with_trainable(flags)


@dataclass(frozen=True)
class GPUType:
    name: str
    peak_flops: float  # dense bf16 FLOP/s
    memory_bytes: float
    efficiency: float = 0.5  # achievable fraction of peak for transformer layers (calibrate with a profile)
    layer_overhead_s: float = 3e-5  # launch/sync cost per layer per action; penalises tiny stages and wide TP


GPU_TYPES = {
    "H100": GPUType("H100", 989e12, 80e9),
    "H200": GPUType("H200", 989e12, 141e9),
    "A100": GPUType("A100", 312e12, 80e9),
    "A40": GPUType("A40", 150e12, 48e9),
    # for tests and CPU profiles: tiny numbers, same code path
    "CPU": GPUType("CPU", 1e11, 16e9, efficiency=1.0, layer_overhead_s=0.0),
}


@dataclass(frozen=True)
class ClusterSpec:
    nodes: int
    gpus_per_node: int
    gpu: GPUType = field(default_factory=lambda: GPU_TYPES["H100"])
    intra_node_bw: float = 450e9  # bytes/s per GPU (NVLink)
    inter_node_bw: float = 50e9  # bytes/s per GPU (400 Gb/s IB)
    p2p_latency_s: float = 1e-5
    reserved_bytes: float = 4e9  # CUDA context, allocator slack, workspaces

    def __post_init__(self) -> None:
        if self.nodes < 1 or self.gpus_per_node < 1:
            raise ValueError(f"cluster needs >= 1 node and GPU per node, got {self.nodes}x{self.gpus_per_node}")

    @property
    def world_size(self) -> int:
        return self.nodes * self.gpus_per_node

    @staticmethod
    def of(num_gpus: int, gpu: str = "H100", gpus_per_node: int = 8, **kw) -> "ClusterSpec":
        if gpu not in GPU_TYPES:
            raise ValueError(f"unknown GPU type {gpu!r}; known: {sorted(GPU_TYPES)}")
        per_node = min(gpus_per_node, num_gpus)
        if num_gpus % per_node:
            raise ValueError(f"{num_gpus} GPUs is not a whole number of {per_node}-GPU nodes")
        return ClusterSpec(num_gpus // per_node, per_node, GPU_TYPES[gpu], **kw)

    def to_dict(self) -> dict:
        return asdict(self)

    @staticmethod
    def from_dict(d: dict) -> "ClusterSpec":
        d = dict(d)
        d["gpu"] = GPUType(**d["gpu"])
        return ClusterSpec(**d)

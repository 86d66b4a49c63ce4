"""Small hand-made specs for planner tests (exact numbers, no HF configs)."""

from amylum.planner.spec import GPUType, BranchSpec, ClusterSpec, LayerSpec, ModelSpec

# 1e9 FLOP/s, no per-layer overhead, no P2P latency, infinite links: times are FLOPs / 1e9
UNIT_GPU = GPUType("UNIT", 1e9, 1e12, efficiency=1.0, layer_overhead_s=0.0)


def unit_cluster(gpus: int = 8, per_node: int = 8, memory: float = 1e12) -> ClusterSpec:
    gpu = GPUType("UNIT", 1e9, memory, efficiency=1.0, layer_overhead_s=0.0)
    return ClusterSpec(gpus // per_node, per_node, gpu, intra_node_bw=1e30, inter_node_bw=1e30,
                       p2p_latency_s=0.0, reserved_bytes=0.0)


def layer(name, module, fwd=1e9, igrad=1e9, wgrad=1e9, params=1000, trainable=True, act=10.0, kind="unit.layer"):
    return LayerSpec(name=name, module=module, kind=kind, params=params, tokens=1, hidden=1, fwd_flops=fwd,
                     igrad_flops=igrad, wgrad_flops=wgrad, act_bytes=act, act_bytes_igrad=act / 2, out_bytes=0.0,
                     trainable=trainable)


def chain_model(n: int, **kw) -> ModelSpec:
    return ModelSpec("chain", llm=tuple(layer(f"llm.layers.{i}", "llm", **kw) for i in range(n)), merge_index=0)


def mm_model(enc_trainable=False, proj_trainable=True, llm_trainable=False) -> ModelSpec:
    """Two branches (2 encoder layers + projector each) feeding a 4-layer LLM (embed first)."""
    def branch(b):
        return BranchSpec(b, (layer(f"{b}.encoder.layers.0", f"{b}.encoder", trainable=enc_trainable),
                              layer(f"{b}.encoder.layers.1", f"{b}.encoder", trainable=enc_trainable),
                              layer(f"{b}.projector", f"{b}.projector", trainable=proj_trainable)))
    llm = (layer("llm.embed", "llm", fwd=0, igrad=0, wgrad=0, trainable=llm_trainable, kind="embedding"),) + tuple(
        layer(f"llm.layers.{i}", "llm", trainable=llm_trainable) for i in range(3))
    return ModelSpec("mm", llm=llm, branches=(branch("vision"), branch("audio")))

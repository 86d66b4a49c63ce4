"""Planning speed: exact pipeline templates and instantiation at scale (issue 10 targets).

- templates for a 128-layer model (llama-like: embedding, 126 decoder blocks of width 8192, head;
  4,096-token samples, microbatch 1) for every node count from n0 to 64 nodes of 8 H100s: ≤ 1 s;
- instantiation (fastest mix + makespan-optimal microbatch split) on 1,024 nodes with those
  templates, global batch 8,192 microbatches: ≤ 1 s.

Each figure is the median of 3 runs (the machine is shared). Run: python bench/templates.py
"""

from __future__ import annotations

import statistics
import time

from amylum.planner.configs import llm_layers
from amylum.planner.instantiate import instantiate
from amylum.planner.spec import ClusterSpec, ModelSpec
from amylum.planner.templates import generate_templates, layer_costs_from_spec

CFG = dict(model_type="llama", hidden_size=8192, num_hidden_layers=126, num_attention_heads=64,
           num_key_value_heads=8, intermediate_size=28672, vocab_size=128256)


def timed(fn, reps=3):
    times, out = [], None
    for _ in range(reps):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out


def main() -> None:
    model = ModelSpec("llama-128L", tuple(llm_layers(CFG, 4096)))
    layers, node = layer_costs_from_spec(model, ClusterSpec.of(64 * 8, "H100", gpus_per_node=8), 1)
    assert len(layers) == 128
    t_tpl, ts = timed(lambda: generate_templates(layers, node, 64, microbatches=32))
    rows = [(f"templates, {len(layers)} layers, n0={ts.n0}..64 nodes x 8 GPUs ({len(ts.templates)} templates)",
             t_tpl, 1.0)]
    for f, B in ((1, 8192), (3, 8192), (8, 8192)):
        t, inst = timed(lambda: instantiate(ts, 1024, f, B))
        rows.append((f"instantiate 1,024 nodes, f={f}, B={B}: {len(inst.pipelines)} pipelines "
                     f"{dict(sorted(inst.mix().items()))}, makespan {inst.makespan_s:.3f} s", t, 1.0))
    print("| step | measured (s) | target (s) | ok |")
    print("|---|---|---|---|")
    for name, t, target in rows:
        print(f"| {name} | {t:.3f} | {target:.1f} | {'yes' if t <= target else 'NO'} |")
    for n in (ts.n0, 16, 64):
        t = ts[n]
        print(f"  template {n} nodes: {t.num_stages} stages of {t.gpus_per_stage} GPUs, bottleneck "
              f"{t.bottleneck_s * 1e3:.1f} ms, fill {t.fill_s * 1e3:.1f} ms, "
              f"peak {max(s.memory_bytes for s in t.stages) / 1e9:.1f} GB/GPU")


if __name__ == "__main__":
    main()

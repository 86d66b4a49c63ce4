"""`amylum plan`, `amylum simulate`, `amylum profile` (registered by amylum/cli.py)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .spec import FREEZING_SCENARIOS, GPU_TYPES, ClusterSpec, ModelSpec, freeze


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "plan", help="choose stages, TP/DP, placement and microbatching for a model on a cluster",
        description="Search per-module pipeline stages and TP, modality-parallel vs colocated encoders, "
        "microbatch size and DP; print the plan and write it as a JSON plan file.")
    p.add_argument("--preset", default="VALM-small",
                   help="planner grid preset (VLM/ALM/VALM-small/medium/large, tiny) or an amylum.models preset "
                   "(built on the meta device); default VALM-small")
    p.add_argument("--freeze", choices=FREEZING_SCENARIOS, default=None,
                   help="freezing scenario (default: grid presets all_trainable; model presets as built)")
    p.add_argument("--gpus", type=int, default=16, help="GPUs available (default 16)")
    p.add_argument("--gpu-type", choices=sorted(GPU_TYPES), default="H100")
    p.add_argument("--gpus-per-node", type=int, default=8)
    p.add_argument("--global-batch", type=int, default=96, help="samples per iteration (default 96)")
    p.add_argument("--text-tokens", type=int, default=None, help="text tokens per sample (default 1024)")
    p.add_argument("--placement", choices=("any", "modality_parallel", "colocated"), default="any")
    p.add_argument("--schedule", choices=("1f1b", "gpipe"), default="1f1b")
    p.add_argument("--no-zero-bubble", action="store_true",
                   help="keep B and W together (no zero-bubble order): the best plan without a W split")
    p.add_argument("--profile", default=None, help="measured profile file (from `amylum profile`)")
    p.add_argument("--out", default="plan.json", help="plan file to write (default plan.json)")
    p.set_defaults(func=command(run_plan), accepts_overrides=False)

    s = subparsers.add_parser(
        "simulate", help="replay a plan file: iteration time, bubbles, memory, Gantt chart",
        description="Validate a plan file, replay its schedule on the cost model, print the summary and write "
        "a Gantt chart (PNG).")
    s.add_argument("plan", help="plan file (JSON, or TOML)")
    s.add_argument("--png", default=None, help="chart path (default: PLAN with .png)")
    s.add_argument("--timeline", action="store_true", help="also print a text timeline")
    s.add_argument("--profile", default=None, help="measured profile file")
    s.set_defaults(func=command(run_simulate), accepts_overrides=False)

    f = subparsers.add_parser(
        "profile", help="time each layer kind's forward/backward and memory on this device",
        description="Build a model from its configs, time one layer of each kind (forward, input-gradient, "
        "weight-gradient) and its saved activations on this device, and write a profile file for "
        "`amylum plan --profile`.")
    f.add_argument("--preset", default="tiny-valm", help="amylum.models preset to build (default tiny-valm)")
    f.add_argument("--tokens", type=int, default=64, help="sequence length to time (default 64)")
    f.add_argument("--microbatch", type=int, default=1)
    f.add_argument("--device", default="cpu", help="cpu or cuda[:N] (default cpu)")
    f.add_argument("--repeats", type=int, default=5, help="timed runs per measurement; the fastest counts")
    f.add_argument("--threads", type=int, default=None,
                   help="CPU threads for torch (1 gives steadier figures on a busy machine)")
    f.add_argument("--out", default="profile.json")
    f.set_defaults(func=command(run_profile), accepts_overrides=False)


def command(fn, *, unavailable: type[Exception] | None = None, unavailable_code: int = 3):
    """Wrap ``fn(args)`` as cli.py's ``func(args, extra)`` for commands without config overrides.

    Bad input (every ValueError) exits 2 with its message; ``unavailable`` (e.g. no GPU for a
    measurement) exits ``unavailable_code`` saying what is missing.
    """
    def call(args, extra=None):
        if extra:
            print(f"amylum {args.command}: unrecognized arguments: {' '.join(extra)}", file=sys.stderr)
            return 2
        try:
            return fn(args)
        except Exception as e:
            if unavailable is not None and isinstance(e, unavailable):
                print(f"amylum {args.command}: not available here: {e}", file=sys.stderr)
                return unavailable_code
            if isinstance(e, ValueError):
                print(f"amylum {args.command}: {e}", file=sys.stderr)
                return 2
            raise
    return call


def load_model(preset: str, scenario: str | None, text_tokens: int | None) -> ModelSpec:
    from .presets import GRID, preset_model

    if preset in GRID:
        model = preset_model(preset, text_tokens)
        return freeze(model, scenario or "all_trainable")
    from amylum.models.presets import build_preset, list_presets

    if preset not in list_presets():
        raise ValueError(f"unknown preset {preset!r}; planner presets: {list(GRID)}; "
                         f"model presets: {list(list_presets())}")
    from .module import model_spec_from_module

    model = model_spec_from_module(build_preset(preset, device="meta"), text_tokens=text_tokens or 1024, name=preset)
    return freeze(model, scenario) if scenario else model


def plan_table(plan, sim) -> str:
    from .timeline import summary

    head = (f"plan for {plan.model}: {plan.placement}, {plan.schedule}, dp {plan.dp}, microbatch "
            f"{plan.microbatch_size} x {plan.num_microbatches}, checkpointing {'on' if plan.checkpointing else 'off'}")
    return head + "\n" + summary(plan, sim)


def run_plan(args) -> int:
    from .planfile import write_plan
    from .profile import read_profile
    from .search import SearchOptions, search

    model = load_model(args.preset, args.freeze, args.text_tokens)
    cluster = ClusterSpec.of(args.gpus, args.gpu_type, args.gpus_per_node)
    profile = read_profile(args.profile) if args.profile else None
    if profile is not None and profile.gpu != cluster.gpu.name:
        print(f"note: profile was measured on {profile.gpu}, planning for {cluster.gpu.name}: "
              f"the profile is not used", file=sys.stderr)
    placements = ("modality_parallel", "colocated") if args.placement == "any" else (args.placement,)
    res = search(model, cluster, args.global_batch, SearchOptions(placements=placements, schedule=args.schedule,
                                                                 zero_bubble=not args.no_zero_bubble),
                 profile=profile)
    print(plan_table(res.plan, res.sim))
    print(f"searched in {res.seconds:.2f} s: {res.partitions} partitions, {res.estimated} combinations estimated, "
          f"{res.simulated} simulated; uses {res.plan.world_size} of {cluster.world_size} GPUs")
    path = write_plan(args.out, res.plan, model, cluster)
    print(f"wrote {path}")
    return 0


def run_simulate(args) -> int:
    from .planfile import read_plan
    from .profile import read_profile
    from .simulate import simulate
    from .timeline import gantt_png, summary, text_timeline

    plan, model, cluster = read_plan(args.plan)
    profile = read_profile(args.profile) if args.profile else None
    sim = simulate(plan, model, cluster, profile)
    print(summary(plan, sim))
    if args.timeline:
        print(text_timeline(plan, sim))
    png = gantt_png(plan, sim, args.png or Path(args.plan).with_suffix(".png"))
    print(f"wrote {png}")
    return 0


def run_profile(args) -> int:
    import torch

    from amylum.models.presets import build_preset

    from .profile import measure_profile, write_profile

    if args.threads:
        torch.set_num_threads(args.threads)
    model = build_preset(args.preset, attention_backend="hf", seed=0)  # the model's own attention kernels
    prof = measure_profile(model, tokens=args.tokens, microbatch=args.microbatch, device=args.device,
                           repeats=args.repeats)
    print(f"profile on {prof.device} ({prof.gpu}), {args.microbatch} x {args.tokens} tokens")
    print(f"{'kind':<28} {'fwd ms':>8} {'igrad ms':>9} {'wgrad ms':>9} {'fwd GFLOP/s':>12} {'act B/token':>12}")
    for k, v in prof.kinds.items():
        print(f"{k:<28} {v.fwd_s * 1e3:>8.3f} {v.igrad_s * 1e3:>9.3f} {v.wgrad_s * 1e3:>9.3f} "
              f"{v.fwd_rate / 1e9:>12.2f} {v.act_bytes_per_token:>12.0f}")
    print(f"wrote {write_profile(args.out, prof)}")
    return 0


def main(argv=None) -> int:
    """Stand-alone entry (``python -m amylum.planner.commands``) for use before cli.py registers us."""
    parser = argparse.ArgumentParser(prog="amylum")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args, [])


if __name__ == "__main__":
    sys.exit(main())

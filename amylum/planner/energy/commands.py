"""`amylum energy-profile` and `amylum energy-plan` (registered by amylum/cli.py).

- ``energy-profile PLAN``: sweep the GPU's clocks and measure time and energy per (stage,
  action) of the plan (measure.py); needs a GPU and the privilege to set its clocks, and
  otherwise says why and writes nothing (exit 3).
- ``energy-plan PLAN``: solve the plan's time–energy frontier (from_plan.py) and write the
  frequency plan for a target iteration time or a straggler (JSON, ``FrequencyPlan``).

A separate subcommand rather than ``amylum profile --energy``: ``profile`` belongs to the
planner's commands module and measures layer FLOP rates; this one needs a plan file.
"""

from __future__ import annotations

from pathlib import Path

EXIT_UNAVAILABLE = 3  # the machine cannot measure (no GPU, no privilege): not a usage error


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "energy-profile", help="measure time and energy per (stage, action) at each GPU clock",
        description="Sweep the SM clock from the highest down (Perseus's rule: stop after energy rose 5 clocks "
        "in a row) and measure each (stage, action) of a plan file on this GPU, writing the JSON-lines "
        "measurements `amylum energy-plan --profile` reads. Needs a CUDA GPU, nvidia-ml-py and the "
        "privilege to set clocks (CAP_SYS_ADMIN); never run it on a shared GPU. Each (stage, action) runs "
        "as a bf16 matmul proxy carrying the cost model's FLOPs.")
    p.add_argument("plan", help="plan file (from `amylum plan`)")
    p.add_argument("--gpu", type=int, default=0, help="GPU index (default 0)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--min-mhz", type=int, default=0, help="lowest clock to try (default: all supported)")
    p.add_argument("--out", default="energy_profile.jsonl")
    p.set_defaults(func=_run(run_profile), accepts_overrides=False)

    q = subparsers.add_parser(
        "energy-plan", help="GPU frequency plan for a plan file: per-action clocks for a target time",
        description="Build the plan's iteration DAG, solve its time-energy frontier and write the frequency "
        "plan (a clock per computation per stage, JSON) for --target-time or --straggler. Clocks and "
        "energy come from --profile (measured) or the analytic H100 model.")
    q.add_argument("plan", help="plan file (from `amylum plan`)")
    want = q.add_mutually_exclusive_group(required=True)
    want.add_argument("--target-time", type=float, help="iteration time budget, seconds")
    want.add_argument("--straggler", type=float,
                      help="a straggler makes the iteration this many times the fastest plan's: run min(T', T*)")
    q.add_argument("--profile", default=None,
                   help="per-clock profile: .csv (stage,instruction,frequency,time,energy) or JSON lines "
                   "(`amylum energy-profile`); default the analytic H100 model")
    q.add_argument("--blocking-power", type=float, default=None, help="W per blocked GPU (default 100)")
    q.add_argument("--unit-time", type=float, default=None, help="solver time unit τ, s (default 1e-4 × T0)")
    q.add_argument("--simplify", type=float, default=0.002, help="hull tolerance (0: exact; default 0.002)")
    q.add_argument("--out", default="frequency_plan.json")
    q.set_defaults(func=_run(run_plan), accepts_overrides=False)


def _run(fn):
    from amylum.planner.commands import command

    from .measure import EnergyProfileUnavailable

    return command(fn, unavailable=EnergyProfileUnavailable, unavailable_code=EXIT_UNAVAILABLE)


def load_profile(path: str):
    from .profiles import from_csv, from_measurements

    return from_csv(path) if Path(path).suffix.lower() == ".csv" else from_measurements(path)


def run_plan(args) -> int:
    from amylum.planner.planfile import read_plan

    from .from_plan import H100_BLOCKING_W, all_max, plan_dag
    from .frontier import solve_frontier
    from .plan import for_straggler, pick

    plan, model, cluster = read_plan(args.plan)
    profile = load_profile(args.profile) if args.profile else None
    power = H100_BLOCKING_W if args.blocking_power is None else args.blocking_power
    if power < 0:
        raise ValueError(f"--blocking-power must be >= 0 W, got {power}")
    if args.target_time is not None and args.target_time <= 0:
        raise ValueError(f"--target-time must be > 0 s, got {args.target_time}")
    if args.straggler is not None and args.straggler < 1.0:
        raise ValueError(f"--straggler is a slowdown factor >= 1, got {args.straggler}")
    # the plan's own microbatch count: the frequency plan must list the runtime's actions
    pd = plan_dag(plan, model, cluster, profile=profile, blocking_power_w=power)
    dag = pd.dag
    base = all_max(dag)
    t0 = dag.makespan([o.time_s for o in base])
    frontier = solve_frontier(dag, unit_time_s=args.unit_time or t0 * 1e-4, simplify=args.simplify)
    if args.straggler is not None:
        t_prime = args.straggler * frontier.t_min_s
        fp = for_straggler(frontier, t_prime)
        why = f"straggler at {t_prime:.4g} s ({args.straggler:g} x the fastest {frontier.t_min_s:.4g} s)"
    else:
        fp = pick(frontier, args.target_time)
        why = f"target {args.target_time:.4g} s"
    fp.save(args.out)
    print(f"{plan.model}: {len(plan.stages)} stages x {plan.num_microbatches} microbatches, {len(dag.nodes)} "
          f"computations; frontier {frontier.t_min_s:.4g}-{frontier.t_star_s:.4g} s ({len(frontier.phases)} phases)")
    # the all-max baseline finishes at t0 and then waits, like the plan, until the plan's time
    t_cmp = max(t0, fp.iteration_time_s)
    e_cmp = dag.energy(base, iteration_time_s=t_cmp)
    print(f"{why}: plan {fp.iteration_time_s:.4g} s, {fp.energy_j:.4g} J per replica; all clocks at max "
          f"({t0:.4g} s, then waiting to {t_cmp:.4g} s): {e_cmp:.4g} J; saved {1 - fp.energy_j / e_cmp:.1%}")
    if profile is None:
        print("note: analytic H100 model (shape only); measure with `amylum energy-profile` for real plans")
    print(f"wrote {args.out}")
    return 0


def run_profile(args) -> int:
    from amylum.planner.planfile import read_plan

    from .from_plan import stage_action_times
    from .measure import open_nvml, proxy_workloads, sweep, write_measurements

    plan, model, cluster = read_plan(args.plan)  # read first: a bad plan is an error on any machine
    gpu = open_nvml(args.gpu)  # raises EnergyProfileUnavailable with the reason
    split = plan.split_w or plan.schedule == "zb"
    times, _ = stage_action_times(plan, model, cluster, split)
    rate = cluster.gpu.peak_flops * cluster.gpu.efficiency
    clocks = [f for f in gpu.supported_mhz() if f >= args.min_mhz]
    work = proxy_workloads(times, rate, device=f"cuda:{args.gpu}")
    records = sweep(work, gpu, clocks, repeats=args.repeats, extra={"workload": "matmul-proxy"})
    path = write_measurements(records, args.out)
    n_clocks = len({r["freq_mhz"] for r in records})
    print(f"measured {len(work)} (stage, action) pairs at {n_clocks} clocks on GPU {args.gpu}; wrote {path}")
    return 0

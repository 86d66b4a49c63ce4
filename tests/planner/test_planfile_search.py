"""Plan files round-trip and reject bad plans with specifics; search beats fixed rules; CLI runs."""

import argparse
import json
from dataclasses import replace

import pytest

from amylum.planner import commands
from amylum.planner.baselines import baseline_plan
from amylum.planner.planfile import PlanError, plan_errors, read_plan, write_plan
from amylum.planner.presets import preset_model
from amylum.planner.search import SearchOptions, search
from amylum.planner.spec import ClusterSpec, freeze

from helpers_planner import mm_model, unit_cluster

SMALL = SearchOptions(tp_choices=(1, 2), mb_choices=(1,), llm_pp_choices=(1, 2, 3), branch_pp_max=2,
                      checkpointing=(False,), simulate_top=4)


@pytest.fixture(scope="module")
def planned():
    model = mm_model()
    cluster = unit_cluster(8)
    return search(model, cluster, 8, SMALL), model, cluster


def test_round_trip(planned, tmp_path):
    res, model, cluster = planned
    path = write_plan(tmp_path / "p.json", res.plan, model, cluster)
    plan2, model2, cluster2 = read_plan(path)
    assert plan2 == res.plan and model2 == model and cluster2 == cluster


def test_toml_is_read(planned, tmp_path):
    # a hand-written TOML plan: the same content as the JSON one
    res, model, cluster = planned
    from amylum.planner.planfile import plan_to_dict

    d = plan_to_dict(res.plan, model, cluster)
    d["plan"]["notes"] = {}

    def toml_value(v):
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, str):
            return json.dumps(v)
        if isinstance(v, list):
            return "[" + ", ".join(toml_value(x) for x in v) + "]"
        if isinstance(v, float):
            return repr(v)
        return str(v)

    def table(prefix, obj, out):
        scalars = {k: v for k, v in obj.items() if not isinstance(v, dict) and not (
            isinstance(v, list) and v and isinstance(v[0], dict))}
        out.append(f"[{prefix}]" if prefix else "")
        out += [f"{k} = {toml_value(v)}" for k, v in scalars.items()]
        for k, v in obj.items():
            if isinstance(v, dict):
                table(f"{prefix}.{k}" if prefix else k, v, out)
            elif isinstance(v, list) and v and isinstance(v[0], dict):
                for item in v:
                    sub = []
                    table(f"{prefix}.{k}" if prefix else k, item, sub)
                    sub[0] = f"[[{prefix}.{k}]]" if prefix else f"[[{k}]]"
                    out += sub
        return out

    lines = table("", d, [])
    (tmp_path / "p.toml").write_text("\n".join(lines) + "\n")
    plan2, model2, _ = read_plan(tmp_path / "p.toml")
    assert plan2 == replace(res.plan, notes={}) and model2 == model


def test_missing_and_duplicated_layers(planned):
    res, model, cluster = planned
    st = list(res.plan.stages)
    last = st[-1]
    st[-1] = replace(last, layers=last.layers[:-1])  # drop the final LLM layer
    errs = plan_errors(replace(res.plan, stages=tuple(st)), model, cluster)
    assert any(e.startswith("layers missing from every stage: llm.layers.2") for e in errs)
    st = list(res.plan.stages)
    st[0] = replace(st[0], layers=st[0].layers + (st[-1].layers[-1],))
    errs = plan_errors(replace(res.plan, stages=tuple(st)), model, cluster)
    assert any(e.startswith(f"layer {st[-1].layers[-1]} is duplicated: in stages [0, {st[-1].id}]") for e in errs)


def test_ranks_must_match_world(planned):
    res, model, cluster = planned
    bigger = replace(res.plan, world_size=res.plan.world_size + 1)
    errs = plan_errors(bigger, model, cluster)
    assert any(f"do not match world size {bigger.world_size}" in e and f"ranks [{res.plan.world_size}] have no stage"
               in e for e in errs)


def test_memory_over_budget_names_the_amount(planned):
    res, model, _ = planned
    tiny = unit_cluster(8, memory=10_000.0)
    errs = plan_errors(res.plan, model, tiny)
    assert errs and all("GB over the 0.0 GB of a UNIT" in e for e in errs)
    with pytest.raises(PlanError, match=r"stage \d+ needs .* GB per GPU"):
        from amylum.planner.planfile import check_plan
        check_plan(res.plan, model, tiny)


def test_search_not_slower_than_baselines():
    model = freeze(preset_model("VALM-small"), "projector_only")
    cluster = ClusterSpec.of(16)
    opts = SearchOptions(mb_choices=(1,), checkpointing=(False,))
    res = search(model, cluster, 32, opts)
    assert not plan_errors(res.plan, model, cluster)
    for kind in ("megatron", "cornstarch", "colocated"):
        b = baseline_plan(model, cluster, 32, kind, mb_choices=(1,))
        assert b is not None
        assert res.sim.iteration_s <= b[1].iteration_s * (1 + 1e-9), kind


def test_cli_help_and_round_trip(tmp_path, capsys):
    parser = argparse.ArgumentParser(prog="amylum")
    sub = parser.add_subparsers(dest="command")
    commands.register(sub)
    for cmd in ("plan", "simulate", "profile"):
        with pytest.raises(SystemExit) as e:
            parser.parse_args([cmd, "--help"])
        assert e.value.code == 0
    out = tmp_path / "plan.json"
    args = parser.parse_args(["plan", "--preset", "tiny", "--gpus", "4", "--gpus-per-node", "4",
                              "--global-batch", "8", "--freeze", "projector_only", "--out", str(out)])
    assert args.func(args, []) == 0
    args = parser.parse_args(["simulate", str(out), "--png", str(tmp_path / "g.png"), "--timeline"])
    assert args.func(args, []) == 0
    text = capsys.readouterr().out
    assert "iteration" in text and "bubble" in text and (tmp_path / "g.png").stat().st_size > 1000
    bad = parser.parse_args(["plan", "--preset", "nope", "--out", str(out)])
    assert bad.func(bad, []) == 2 and "unknown preset 'nope'" in capsys.readouterr().err


def test_modality_parallel_on_too_few_gpus_says_so_not_memory():
    model = freeze(preset_model("VALM-small"), "frozen_encoders")  # two encoder branches + the LLM
    opts = SearchOptions(placements=("modality_parallel",))
    with pytest.raises(ValueError, match=r"needs at least 3 GPUs \(one stage per encoder branch plus the LLM\); got 2"):
        search(model, ClusterSpec.of(2), 16, opts)
    assert search(model, ClusterSpec.of(4), 16, opts).plan.placement == "modality_parallel"

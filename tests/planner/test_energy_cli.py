"""`amylum energy-plan` and `amylum energy-profile`: CLI paths on CPU, the clock sweep on a fake GPU."""

import argparse
import sys
import types

import pytest

from amylum.planner.energy import commands, measure
from amylum.planner.energy.from_plan import plan_dag
from amylum.planner.energy.measure import Workload, sweep
from amylum.planner.energy.plan import FrequencyPlan
from amylum.planner.energy.profiles import analytic, from_measurements
from amylum.planner.planfile import read_plan, write_plan
from amylum.planner.presets import preset_model
from amylum.planner.search import SearchOptions, search
from amylum.planner.spec import ClusterSpec, freeze


def main(argv):
    """`amylum ARGV` with only this module's commands: amylum.cli imports every package's
    commands (seconds of imports); the registration itself is checked below."""
    parser = argparse.ArgumentParser(prog="amylum")
    commands.register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args, [])


def test_registered_in_cli():
    import ast
    import pathlib

    src = (pathlib.Path(__file__).resolve().parents[2] / "amylum" / "cli.py").read_text()
    node = next(n for n in ast.walk(ast.parse(src)) if isinstance(n, ast.Assign)
                and getattr(n.targets[0], "id", "") == "COMMAND_MODULES")
    assert "amylum.planner.energy.commands" in ast.literal_eval(node.value)


@pytest.fixture(scope="module")
def plan_file(tmp_path_factory):
    model = freeze(preset_model("tiny"), "frozen_encoders")
    cluster = ClusterSpec.of(4)
    res = search(model, cluster, 8, SearchOptions(placements=("modality_parallel",)))
    return write_plan(tmp_path_factory.mktemp("plan") / "plan.json", res.plan, model, cluster)


def test_energy_plan_straggler(plan_file, tmp_path, capsys):
    out = tmp_path / "fp.json"
    assert main(["energy-plan", str(plan_file), "--straggler", "1.2", "--out", str(out)]) == 0
    fp = FrequencyPlan.load(out)
    plan, model, cluster = read_plan(plan_file)
    dag = plan_dag(plan, model, cluster).dag
    # one list per stage, in the order that stage runs its computations
    assert set(fp.ranks) == {s.id for s in plan.stages}
    for r, ids in dag.order.items():
        assert [(c.action, c.microbatch) for c in fp.ranks[r]] == [(dag.nodes[i].kind, dag.nodes[i].microbatch)
                                                                  for i in ids]
    assert "saved" in capsys.readouterr().out


def test_energy_plan_target_and_profile(plan_file, tmp_path, capsys):
    plan, model, cluster = read_plan(plan_file)
    csv = tmp_path / "prof.csv"
    analytic(plan_dag(plan, model, cluster).times_at_max).to_csv(csv)
    out = tmp_path / "fp.json"
    assert main(["energy-plan", str(plan_file), "--target-time", "1e9", "--profile", str(csv), "--out", str(out)]) == 0
    fp = FrequencyPlan.load(out)
    assert all(c.mhz <= 1740 for steps in fp.ranks.values() for c in steps)  # the CSV's clocks, not H100's
    assert main(["energy-plan", str(plan_file), "--target-time", "1e-9", "--out", str(out)]) == 2
    assert "no plan is as fast" in capsys.readouterr().err


def test_energy_plan_needs_one_goal(plan_file):
    with pytest.raises(SystemExit):
        main(["energy-plan", str(plan_file)])
    with pytest.raises(SystemExit):
        main(["energy-plan", str(plan_file), "--straggler", "1.2", "--target-time", "1"])


def test_energy_plan_bad_inputs(plan_file, tmp_path, capsys):
    assert main(["energy-plan", str(tmp_path / "missing.json"), "--straggler", "1.2"]) == 2
    assert main(["energy-plan", str(plan_file), "--straggler", "0.5"]) == 2
    assert "slowdown factor" in capsys.readouterr().err


def _no_cuda(monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


def test_energy_profile_without_gpu(plan_file, tmp_path, monkeypatch, capsys):
    _no_cuda(monkeypatch)
    out = tmp_path / "m.jsonl"
    assert main(["energy-profile", str(plan_file), "--out", str(out)]) == 3
    assert "no CUDA GPU visible" in capsys.readouterr().err
    assert not out.exists()  # no fake data


def test_energy_profile_without_privilege(plan_file, tmp_path, monkeypatch, capsys):
    import torch

    class NoPermission(Exception):
        pass

    def deny(*a):
        raise NoPermission("Insufficient Permissions")

    fake = types.SimpleNamespace(
        nvmlInit=lambda: None, nvmlDeviceGetHandleByIndex=lambda i: object(),
        nvmlDeviceGetTotalEnergyConsumption=lambda h: 1000, nvmlDeviceGetSupportedMemoryClocks=lambda h: [2619],
        nvmlDeviceGetSupportedGraphicsClocks=lambda h, m: [1980, 1965], nvmlDeviceSetGpuLockedClocks=deny,
        nvmlDeviceResetGpuLockedClocks=lambda h: None)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    out = tmp_path / "m.jsonl"
    assert main(["energy-profile", str(plan_file), "--out", str(out)]) == 3
    err = capsys.readouterr().err
    assert "no privilege to set clocks" in err and "SYS_ADMIN" in err
    assert not out.exists()


class FakeGpu:
    """Energy counter driven by the workloads: per run, energy = e(f), as if the clock mattered."""

    def __init__(self, energy_at):
        self.energy_at, self.f, self.total, self.resets, self.locked = energy_at, None, 0.0, 0, []

    def supported_mhz(self):
        return sorted(self.energy_at)

    def lock(self, mhz):
        self.f = mhz
        self.locked.append(mhz)

    def reset(self):
        self.resets += 1

    def energy_j(self):
        return self.total

    def sync(self):
        pass

    def work(self):
        self.total += self.energy_at[self.f]


def test_sweep_stops_after_rises_and_resets(tmp_path):
    # energy falls from 1980 to 1500 MHz, then rises at every lower clock
    energy_at = {f: abs(f - 1500) / 100 + 5.0 for f in range(900, 1981, 60)}
    gpu = FakeGpu(energy_at)
    work = [Workload(0, "F", gpu.work), Workload(1, "B", gpu.work, scale=2.0)]
    recs = sweep(work, gpu, repeats=2, stop_after_rises=3)
    clocks = sorted({r["freq_mhz"] for r in recs}, reverse=True)
    assert clocks[0] == 1980 and gpu.locked == clocks
    assert [f for f in clocks if f < 1500] == [1440, 1380, 1320]  # three rises in a row, then stop
    assert gpu.resets == 1
    b = [r for r in recs if r["stage"] == 1 and r["freq_mhz"] == 1980][0]
    assert b["energy_j"] == pytest.approx(2.0 * energy_at[1980])  # the proxy's scale applies
    path = measure.write_measurements(recs, tmp_path / "m.jsonl")
    prof = from_measurements(path)
    assert [o.freq_mhz for o in prof.options(0, "F")] == clocks


def test_sweep_resets_on_error():
    gpu = FakeGpu({1980: 1.0, 1965: 1.0})

    def boom():
        raise RuntimeError("kernel failed")

    with pytest.raises(RuntimeError, match="kernel failed"):
        sweep([Workload(0, "F", boom)], gpu)
    assert gpu.resets == 1
    with pytest.raises(ValueError, match="no workloads"):
        sweep([], gpu)

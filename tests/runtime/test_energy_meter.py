"""Energy metering degrades to an explicit "not available"; clock control is opt-in and restores."""

import logging

import pytest
import torch

from amylum.runtime.energy import ClockController, EnergyMeter, PlanClocks, StepEnergy, all_ranks_total


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU path")
def test_meter_without_gpu_says_not_available():
    m = EnergyMeter()
    assert not m.available and "GPU" in m.reason
    m.begin_step()
    s = m.end_step(tokens=100)
    assert s.energy_j is None and s.avg_power_w is None and s.tokens_per_j is None
    assert s.metrics() == {"energy_available": False, "energy_unavailable_reason": m.reason}
    assert all_ranks_total(s) is s  # no process group: unchanged


def test_meter_errors_and_disabled():
    m = EnergyMeter(backend="none")
    assert not m.available and "disabled" in m.reason
    with pytest.raises(RuntimeError, match="begin_step"):
        m.end_step()
    with pytest.raises(ValueError, match="backend"):
        EnergyMeter(backend="rapl")


def test_step_energy_metrics_when_measured():
    s = StepEnergy(time_s=2.0, energy_j=500.0, tokens=1000)
    assert s.metrics() == {"energy_available": True, "energy_j": 500.0, "avg_power_w": 250.0, "tokens_per_j": 2.0}


class FakeClocks:
    def __init__(self, fail_lock=False):
        self.calls = []
        self.fail_lock = fail_lock

    def lock(self, gpu, mhz):
        if self.fail_lock:
            raise PermissionError("NVML_ERROR_NO_PERMISSION")
        self.calls.append(("lock", gpu, mhz))

    def reset(self, gpu):
        self.calls.append(("reset", gpu))


def test_dry_run_never_touches_the_gpu(caplog):
    fake = FakeClocks()
    c = ClockController(0, enabled=False, backend=fake)
    with caplog.at_level(logging.DEBUG, logger="amylum.runtime.energy"):
        c.set_clock(1200)
    c.close()
    assert fake.calls == [] and c.intended == [1200]
    assert "would lock" in caplog.text


def test_clocks_restored_on_error():
    fake = FakeClocks()
    with pytest.raises(ZeroDivisionError):
        with ClockController(3, enabled=True, backend=fake) as c:
            c.set_clock(1100)
            1 / 0
    assert fake.calls == [("lock", 3, 1100), ("reset", 3)]


def test_no_permission_falls_back_to_dry_run(caplog):
    fake = FakeClocks(fail_lock=True)
    c = ClockController(0, enabled=True, backend=fake)
    with caplog.at_level(logging.WARNING, logger="amylum.runtime.energy"):
        c.set_clock(1000)
        c.set_clock(900)
    c.close()
    assert not c.enabled and c.intended == [1000, 900]
    assert caplog.text.count("dry run") == 1  # warned once
    assert fake.calls == []


def test_plan_clocks_follow_the_plan_order():
    from amylum.planner.energy.plan import ClockStep

    steps = [ClockStep("F", 0, 0, 1400), ClockStep("B", 0, 0, 1300)]
    c = ClockController(0, enabled=False)
    pc = PlanClocks(steps, c)
    pc.before("F", 0, 0)
    with pytest.raises(RuntimeError, match="another schedule"):
        pc.before("F", 0, 1)
    pc.before("B", 0, 0)
    pc.end_step()
    assert c.intended == [1400, 1300]


class FakeNvml:
    def nvmlDeviceGetCount(self):
        return 4

    def nvmlDeviceGetHandleByIndex(self, i):
        return ("index", i)

    def nvmlDeviceGetHandleByUUID(self, uuid):
        return ("uuid", uuid)


def test_nvml_handles_follow_cuda_visible_devices(monkeypatch):
    from amylum.runtime.energy import _nvml_handles

    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    assert _nvml_handles(FakeNvml(), None) == [("index", i) for i in range(4)]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,3")
    assert _nvml_handles(FakeNvml(), [0]) == [("index", 2)]  # CUDA device 0 is the machine's GPU 2
    assert _nvml_handles(FakeNvml(), None) == [("index", 2), ("index", 3)]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "GPU-abc")
    assert _nvml_handles(FakeNvml(), [0]) == [("uuid", "GPU-abc")]


def test_energy_tally_windows_and_run_total():
    from amylum.runtime.energy import EnergyTally

    t = EnergyTally()
    for _ in range(2):
        t.add(StepEnergy(time_s=0.5, energy_j=3.0, tokens=30))
    assert t.flush() == {"energy_available": True, "energy_j_per_step": 3.0, "avg_power_w": 6.0, "tokens_per_j": 10.0}
    assert t.flush() == {}  # an empty window logs nothing
    t.add(StepEnergy(time_s=0.5, energy_j=3.0, tokens=30))
    assert t.run_summary("x")["energy_j"] == 6.0  # only flushed windows count
    t.add(StepEnergy(time_s=0.5, energy_j=None, tokens=30, reason="counter gone"))
    assert t.flush() == {"energy_available": False, "energy_unavailable_reason": "counter gone"}  # no partial sum
    assert t.run_summary("x") == {"available": False, "why": "counter gone"}

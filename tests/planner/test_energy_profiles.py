"""Profiles: CSV (Perseus format), measurement files, analytic model."""

import json

import pytest

from amylum.planner.energy.profiles import AnalyticGPU, ProfileError, analytic, from_csv, from_measurements


def test_csv_averages_repeats_and_maps_names(tmp_path):
    p = tmp_path / "prof.csv"
    p.write_text("stage,instruction,frequency,time,energy\n"
                 "0,forward,1410,0.010,3.0\n0,forward,1410,0.012,3.4\n0,backward,1410,0.02,6\n"
                 "0,forward,1200,0.013,2.9\n")
    prof = from_csv(p)
    f = {o.freq_mhz: o for o in prof.options(0, "F")}
    assert f[1410].time_s == pytest.approx(0.011) and f[1410].energy_j == pytest.approx(3.2)
    assert len(prof.options(0, "B")) == 1
    with pytest.raises(ProfileError, match="stage 1"):
        prof.options(1, "F")
    back = tmp_path / "out.csv"
    prof.to_csv(back)
    assert from_csv(back).table == prof.table


def test_csv_errors_name_the_line(tmp_path):
    p = tmp_path / "bad.csv"
    p.write_text("stage,instruction,frequency,time,energy\n0,sideways,1410,0.01,3\n")
    with pytest.raises(ProfileError, match="sideways"):
        from_csv(p)
    p.write_text("stage,freq\n")
    with pytest.raises(ProfileError, match="header"):
        from_csv(p)


def test_measurements_with_microbatch(tmp_path):
    p = tmp_path / "m.jsonl"
    recs = [{"stage": 1, "kind": "F", "freq_mhz": 1500, "time_s": 0.02, "energy_j": 5.0, "microbatch": 3},
            {"stage": 1, "kind": "F", "freq_mhz": 1500, "time_s": 0.01, "energy_j": 2.0}]
    p.write_text("\n".join(json.dumps(r) for r in recs) + "\n")
    prof = from_measurements(p)
    assert prof.options(1, "F", 3)[0].time_s == pytest.approx(0.02)
    assert prof.options(1, "F", 0)[0].time_s == pytest.approx(0.01)  # falls back to (stage, kind)
    p.write_text('{"stage": 1}\n')
    with pytest.raises(ProfileError, match="m.jsonl:1"):
        from_measurements(p)


def test_analytic_model_shape():
    gpu = AnalyticGPU()
    opts = gpu.options(0.05)
    assert opts[0].freq_mhz == gpu.f_max_mhz and opts[0].time_s == pytest.approx(0.05)
    times = [o.time_s for o in opts]
    assert times == sorted(times)  # lower clock, longer
    # energy first falls as the clock drops (dynamic power ∝ f·V²)
    assert opts[len(opts) // 2].energy_j < opts[0].energy_j
    prof = analytic({(0, "F"): 0.05})
    assert prof.options(0, "F") == opts
    with pytest.raises(ProfileError):
        AnalyticGPU(mem_fraction=1.5)

"""Per-node snapshots and per-layer state: atomic, own-node only, bit-exact round trips."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from amylum.config import ConfigError
from amylum.resilience.config import load_elastic_config
from amylum.resilience.snapshot import NodeSnapshots
from amylum.resilience.units import load_unit_state, model_units, unit_digest, unit_state


class _Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(8, 4)
        self.layers = nn.ModuleList([nn.Linear(4, 4), nn.Linear(4, 4)])
        self.head = nn.Linear(4, 8, bias=False)
        self.head.weight = self.embed.weight  # tied: must be one unit's, once

    def forward(self, x):
        h = self.embed(x)
        for layer in self.layers:
            h = layer(h)
        return self.head(h).sum()


def _trained(seed):
    torch.manual_seed(seed)
    m = _Tiny()
    opt = torch.optim.AdamW(m.parameters(), lr=0.1)
    for _ in range(2):
        m(torch.tensor([1, 2, 3])).backward()
        opt.step()
        opt.zero_grad()
    return m, opt


def test_units_cover_each_parameter_once_and_state_round_trips():
    m, opt = _trained(0)
    units = model_units(m)
    assert [u.name for u in units] == ["embed", "layers.0", "layers.1"]  # tied head is embed's
    assert sum(len(u.params) for u in units) == len(list(m.parameters()))
    fresh, fresh_opt = _trained(1)  # different values everywhere
    for u in units:
        assert unit_digest(unit_state(fresh, fresh_opt, u)) != unit_digest(unit_state(m, opt, u))
        load_unit_state(fresh, fresh_opt, u, {k: v.clone() for k, v in unit_state(m, opt, u).items()})
        assert unit_digest(unit_state(fresh, fresh_opt, u)) == unit_digest(unit_state(m, opt, u))
    # the restored optimizer continues exactly like the original
    for model, o in ((m, opt), (fresh, fresh_opt)):
        model(torch.tensor([4, 5])).backward()
        o.step()
    assert all(torch.equal(a, b) for a, b in zip(m.parameters(), fresh.parameters()))


def test_snapshots_are_atomic_keep_two_and_read_only_own_node(tmp_path):
    a = NodeSnapshots(tmp_path, "job", "a")
    b = NodeSnapshots(tmp_path, "job", "b")
    for step in (1, 2, 3):
        a.write_async(step, {"x": torch.full((3,), float(step))}, {"lineage": "L", "units": ["u"]})
    a.wait()
    assert [s.info.step for s in a.list()] == [2, 3]  # keeps the last two
    assert b.list() == []  # another node's folder is never listed
    (a.dir / ".tmp-step-00000004").mkdir()  # a write killed half-way is not a snapshot
    assert [s.info.step for s in a.list()] == [2, 3]
    assert torch.equal(NodeSnapshots.load(a.list()[-1])["x"], torch.full((3,), 3.0))
    a.drop_after(2, "L")
    assert [s.info.step for s in a.list()] == [2]
    a.drop_after(2, "other-lineage")
    assert a.list() == []
    with pytest.raises(ValueError, match="without '/'"):
        NodeSnapshots(tmp_path, "job", "../b")


def test_snapshot_write_errors_surface(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    snaps = NodeSnapshots(blocker, "job", "a")
    snaps.write_async(1, {"x": torch.zeros(1)}, {"lineage": "L", "units": []})
    with pytest.raises(RuntimeError, match="writing a snapshot"):
        snaps.wait()


def test_config_splits_resilience_table_and_checks_it(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text('[training]\nsteps = 7\nbetas = [0.9, 0.99]\n[resilience]\nf = 2\nglobal_microbatches = 6\n')
    cfg = load_elastic_config(path, ["--resilience.heartbeat_timeout_s=2", "--job.seed=3"])
    assert cfg.run.training.steps == 7 and cfg.run.training.betas == [0.9, 0.99] and cfg.run.job.seed == 3
    assert cfg.resilience.f == 2 and cfg.resilience.heartbeat_timeout_s == 2.0
    with pytest.raises(ConfigError, match="unknown key resilience.nope"):
        load_elastic_config(path, ["--resilience.nope=1"])
    with pytest.raises(ConfigError, match="cannot give each of f\\+1 = 3 pipelines"):
        load_elastic_config(path, ["--resilience.global_microbatches=2"])

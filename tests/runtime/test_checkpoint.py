import json

import numpy as np
import pytest
import torch

from amylum.config import TrainingConfig
from amylum.runtime import checkpoint as ckpt_mod
from amylum.runtime.checkpoint import CheckpointError, CheckpointManager
from amylum.runtime.optim import build_optimizer, build_scheduler
from amylum.runtime.state import join_tensors, rng_state, set_rng_state, split_tensors
from runtime_standins import SequenceLoader, TinyLM

CPU = torch.device("cpu")


def _trained(steps: int = 3):
    torch.manual_seed(0)
    model = TinyLM()
    cfg = TrainingConfig(steps=10, warmup_steps=2)
    opt = build_optimizer(model, cfg, CPU)
    sched = build_scheduler(opt, cfg)
    for batch in list(SequenceLoader())[:steps]:
        model(batch).loss.backward()
        opt.step()
        sched.step()
        opt.zero_grad()
    return model, opt, sched


def _fresh():
    torch.manual_seed(0)  # same seeded build: frozen weights match, they are not in checkpoints
    model = TinyLM()
    cfg = TrainingConfig(steps=10, warmup_steps=2)
    opt = build_optimizer(model, cfg, CPU)
    return model, opt, build_scheduler(opt, cfg)


def _same_params(a, b):
    return all(torch.equal(x, y) for x, y in zip(a.parameters(), b.parameters()))


def test_round_trip_restores_model_optimizer_scheduler_rng(tmp_path):
    model, opt, sched = _trained()
    mgr = CheckpointManager(tmp_path, keep_last=2)
    torch.manual_seed(7)
    path = mgr.save(3, model, opt, {"scheduler": sched.state_dict(), "rng": rng_state()})
    expected_draw = torch.rand(3)

    model2, opt2, sched2 = _fresh()
    assert not _same_params(model, model2)
    extra = CheckpointManager.load(path, model2, opt2)
    sched2.load_state_dict(extra["scheduler"])
    set_rng_state(extra["rng"])
    assert extra["step"] == 3
    assert _same_params(model, model2)
    assert torch.equal(torch.rand(3), expected_draw)
    assert sched2.get_last_lr() == sched.get_last_lr()
    s1, s2 = opt.state_dict(), opt2.state_dict()
    assert s1["param_groups"] == s2["param_groups"]
    for k in s1["state"]:
        assert all(torch.equal(s1["state"][k][n], s2["state"][k][n]) for n in s1["state"][k])


def test_checkpoint_is_pickle_free_and_skips_frozen(tmp_path):
    model, opt, sched = _trained()
    path = CheckpointManager(tmp_path).save(3, model, opt, {})
    suffixes = {p.suffix for p in path.rglob("*") if p.is_file()}
    assert suffixes <= {".json", ".safetensors"}, suffixes
    from safetensors import safe_open

    names = set()
    for f in (path / "state").glob("*.safetensors"):
        with safe_open(str(f), "pt") as st:
            names |= set(st.keys())
    assert "model.head.weight" in names
    assert not any(n.startswith("model.frozen.") for n in names)


def test_crash_mid_save_leaves_previous_checkpoint_loadable(tmp_path, monkeypatch):
    model, opt, sched = _trained()
    mgr = CheckpointManager(tmp_path, keep_last=3)
    good = mgr.save(3, model, opt, {"tag": "good"})
    before = [p.detach().clone() for p in model.parameters()]

    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)

    def crash(*args, **kwargs):  # dies after the tensors are written, before the publish
        raise KeyboardInterrupt("simulated kill")

    monkeypatch.setattr(ckpt_mod, "save_file", crash)
    with pytest.raises(KeyboardInterrupt):
        mgr.save(6, model, opt, {"tag": "bad"})
    monkeypatch.undo()

    assert (tmp_path / ".tmp-step-00000006").exists()  # the half-written one is there …
    assert not CheckpointManager.is_valid(tmp_path / ".tmp-step-00000006")  # … but never looks valid
    assert mgr.latest().path == good
    model2, opt2, _ = _fresh()
    assert CheckpointManager.load(mgr.latest().path, model2, opt2)["tag"] == "good"
    assert all(torch.equal(a, b) for a, b in zip(before, model2.parameters()))
    mgr.save(9, model, opt, {})  # the next save clears the debris
    assert not (tmp_path / ".tmp-step-00000006").exists()


def test_truncated_checkpoint_is_not_valid(tmp_path):
    model, opt, _ = _trained()
    mgr = CheckpointManager(tmp_path)
    first = mgr.save(1, model, opt, {})
    second = mgr.save(2, model, opt, {})
    shard = next((second / "state").glob("*.safetensors"))
    shard.write_bytes(shard.read_bytes()[:100])  # e.g. a disk filled up after the rename
    assert mgr.latest().path == first
    with pytest.raises(CheckpointError, match="not a complete checkpoint"):
        CheckpointManager.load(second, *_fresh()[:2])


def test_keep_last(tmp_path):
    model, opt, _ = _trained(1)
    mgr = CheckpointManager(tmp_path, keep_last=2)
    for step in (1, 2, 3, 4):
        mgr.save(step, model, opt, {})
    assert [c.step for c in mgr.checkpoints()] == [3, 4]


def test_loading_into_a_different_model_is_a_clear_error(tmp_path):
    model, opt, _ = _trained(1)
    path = CheckpointManager(tmp_path).save(1, model, opt, {})
    other = torch.nn.Sequential(torch.nn.Linear(2, 2))
    with pytest.raises(CheckpointError, match="lacks"):
        CheckpointManager.load(path, other)


def test_split_tensors_round_trip():
    state = {"a": (1, 2.5, "x"), 3: [torch.arange(4), np.arange(3, dtype=np.uint32)], "n": None, "b": True}
    tree, tensors = split_tensors(state, "extra")
    json.dumps(tree)
    back = join_tensors(json.loads(json.dumps(tree)), tensors)
    assert back["a"] == (1, 2.5, "x") and back["n"] is None and back["b"] is True
    assert torch.equal(back[3][0], torch.arange(4))
    assert np.array_equal(back[3][1], np.arange(3)) and back[3][1].dtype == np.uint32
    with pytest.raises(TypeError, match="without pickling"):
        split_tensors({"f": object()}, "extra")

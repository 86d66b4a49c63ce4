import copy
import json

import pytest
import torch

from amylum.runtime.metrics import read_jsonl
from amylum.runtime.trainer import Trainer, seed_everything

from runtime_standins import SequenceLoader, TinyLM


def _trainer(cfg, **kw):
    seed_everything(cfg.job.seed, True)
    return Trainer(cfg, TinyLM(), SequenceLoader(**kw), device=torch.device("cpu"))


def test_loss_decreases_and_frozen_params_stay(small_config):
    tr = _trainer(small_config)
    frozen_before = tr.model.frozen.weight.clone()
    result = tr.fit(log=lambda s: None)
    losses = [result.losses[s] for s in sorted(result.losses)]
    assert len(losses) == 12
    assert sum(losses[-3:]) / 3 < 0.7 * sum(losses[:3]) / 3
    assert torch.equal(tr.model.frozen.weight, frozen_before)
    assert all(p.grad is None for p in tr.model.frozen.parameters())
    # frozen parameters get no optimizer state
    state_params = {id(p) for p in tr.optimizer.state}
    assert id(tr.model.frozen.weight) not in state_params


def test_exact_resume_matches_uninterrupted(small_config, tmp_path):
    full = _trainer(small_config).fit(log=lambda s: None)

    small_config.job.run_dir = str(tmp_path / "killed")
    _trainer(small_config).fit(stop_after=6, log=lambda s: None)  # "killed" after step 6 (ckpt at 4)
    # As a new process would: fresh model (same seeded build), fresh loader, RNG from the checkpoint.
    resumed = _trainer(small_config)
    assert resumed.resume()
    assert resumed.step == 4
    rest = resumed.fit(log=lambda s: None)
    assert rest.start_step == 4
    for step in range(5, 13):
        assert rest.losses[step] == full.losses[step], step  # bit-exact on CPU
    # metrics.jsonl reads as one run: steps 5, 6 of the killed run were replaced, not duplicated
    steps = [r["step"] for r in read_jsonl(tmp_path / "killed" / "metrics.jsonl") if r["kind"] == "train"]
    assert steps == list(range(1, 13))


def test_grad_accumulation_weights_tokens_equally(small_config):
    small_config.training.steps = 3
    a = _trainer(small_config, batch_size=8)
    accum = copy.deepcopy(small_config)
    accum.training.grad_accum = 2
    accum.job.run_dir += "-accum"
    b = _trainer(accum, batch_size=4)
    a.model.drop.p = b.model.drop.p = 0.0  # dropout masks differ with the split; compare the math only
    ra, rb = a.fit(log=lambda s: None), b.fit(log=lambda s: None)
    for step in ra.losses:
        assert abs(ra.losses[step] - rb.losses[step]) < 1e-5


def test_logged_metrics(small_config):
    _trainer(small_config).fit(log=lambda s: None)
    rec = read_jsonl(f"{small_config.job.run_dir}/metrics.jsonl")[0]
    for key in ("loss", "grad_norm", "lr", "tokens_per_s", "samples_per_s", "peak_rss_gib", "llm_tflops"):
        assert key in rec, key
    json.dumps(rec)


class _Results:
    def __init__(self, step):
        self.step = step

    def flat(self):
        return {"qa/accuracy": self.step / 100, "qa/accuracy/modality=image": self.step / 200, "qa/n": 4.0}


class RecordingEvaluator:
    """The trainer's contract with amylum.evaluation.Evaluator: evaluate(model, step, final=...).flat()."""

    def __init__(self):
        self.calls = []

    def evaluate(self, model, step=None, *, final=False):
        self.calls.append((step, final, model.training))
        return _Results(step)


def test_trainer_calls_the_evaluator_every_n_steps_and_at_the_end(small_config):
    small_config.eval.every = 5
    seed_everything(0, True)
    ev = RecordingEvaluator()
    tr = Trainer(small_config, TinyLM(), SequenceLoader(), device=torch.device("cpu"), evaluator=ev)
    result = tr.fit(log=lambda s: None)
    assert ev.calls == [(5, False, False), (10, False, False), (12, True, False)]  # eval mode; final at the end
    evals = [r for r in read_jsonl(f"{small_config.job.run_dir}/metrics.jsonl") if r["kind"] == "eval"]
    assert [r["step"] for r in evals] == [5, 10, 12]
    assert evals[-1]["qa/accuracy/modality=image"] == 0.06 and result.last_eval["qa/accuracy"] == 0.12


class FakeMeter:
    """2 J per step from a pretend GPU counter."""

    backend = "fake"

    def begin_step(self):
        pass

    def end_step(self, tokens=0):
        from amylum.runtime.energy import StepEnergy

        return StepEnergy(time_s=0.5, energy_j=2.0, tokens=tokens)


def test_energy_metrics_when_measured(small_config):
    seed_everything(0, True)
    tr = Trainer(small_config, TinyLM(), SequenceLoader(), device=torch.device("cpu"), energy_meter=FakeMeter())
    result = tr.fit(log=lambda s: None)
    rec = read_jsonl(f"{small_config.job.run_dir}/metrics.jsonl")[0]
    assert rec["energy_available"] is True and rec["energy_j_per_step"] == 2.0 and rec["avg_power_w"] == 4.0
    assert rec["tokens_per_j"] == 4 * 8 / 2.0  # batch 4 × 8 tokens per step
    assert result.energy == {"available": True, "backend": "fake", "energy_j": 24.0, "steps": 12,
                             "energy_j_per_step": 2.0, "energy_kwh": 24.0 / 3.6e6}


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU path")
def test_energy_not_available_without_gpu_is_never_zero(small_config):
    result = _trainer(small_config).fit(log=lambda s: None)
    for rec in read_jsonl(f"{small_config.job.run_dir}/metrics.jsonl"):
        assert rec["energy_available"] is False and "GPU" in rec["energy_unavailable_reason"]
        assert not {"energy_j_per_step", "avg_power_w", "tokens_per_j"} & set(rec)
    assert result.energy["available"] is False and "GPU" in result.energy["why"]

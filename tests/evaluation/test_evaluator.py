"""The evaluator end to end on a tiny VLM: keys, slices, robustness, failures, files, determinism."""

import json

import pytest
import torch

from amylum.evaluation import Evaluator, parse_suite
from amylum.evaluation.config import EvalConfigError


def suite_table(eval_set, **robustness):
    return {
        "budget": {"max_samples": 0, "batch_size": 4},
        "tasks": [{"name": "heldout", "data": str(eval_set), "max_new_tokens": 3,
                   "metrics": ["accuracy", "rouge_l", {"type": "exact_match", "name": "em_strict", "normalize": "none"}]}],
        "slices": [{"name": "modality", "by": "modality"}, {"name": "images", "by": "num_images"},
                   {"name": "answer_type", "by": "answer_type"}, {"name": "task", "by": "field:task"}],
        "robustness": robustness or {"perturbations": ["image_noise", "image_blur", {"type": "image_crop", "keep": 0.5},
                                                       {"type": "paraphrase", "templates": ["Q: {prompt}"]}]},
    }


def test_evaluate_end_to_end(model, tokenizer, eval_set, tmp_path):
    ev = Evaluator(parse_suite(suite_table(eval_set)), tokenizer, max_length=128, out_dir=tmp_path / "eval")
    rng = torch.get_rng_state()
    res = ev.evaluate(model, step=10, final=True)
    assert torch.equal(rng, torch.get_rng_state())  # evaluation leaves training's RNG alone
    flat = res.flat()
    assert flat["heldout/n"] == 6  # the record with a missing image is skipped, not scored
    for key in ("heldout/accuracy", "heldout/rouge_l", "heldout/em_strict", "heldout/accuracy/modality=image",
                "heldout/accuracy/modality=text", "heldout/n/images=2", "heldout/accuracy/answer_type=yes/no",
                "heldout/accuracy/task=sum", "heldout/accuracy/robust:image_noise",
                "heldout/accuracy/robust:image_noise/delta", "heldout/rouge_l/robust:paraphrase"):
        assert key in flat, key
    task = res.tasks["heldout"]
    # every slice partitions the evaluated items
    for name, buckets in task["slices"].items():
        assert sum(b["n"] for b in buckets.values()) == 6, name
    assert {k: b["n"] for k, b in task["slices"]["modality"].items()} == {"image": 4, "text": 2}
    assert {k: b["n"] for k, b in task["slices"]["images"].items()} == {"0": 2, "1": 3, "2": 1}
    # image perturbations touch the 4 image records; the paraphrase all 6
    assert task["robustness"]["image_crop"]["n"] == 4 and task["robustness"]["image_crop"]["options"] == {"keep": 0.5}
    assert task["robustness"]["paraphrase"]["n"] == 6
    assert task["failures"]["skipped"] == 1
    assert task["failures"]["skipped_examples"][0]["reason"] == "missing_file"
    assert task["metrics"]["accuracy"]["scorer"] == "auto:amylum.ExactMatch"
    assert len(task["dataset"]["sha256"]) == 64
    # files: results with per-item scores, predictions, perturbed media
    saved = json.loads((tmp_path / "eval/step-00000010.json").read_text())
    assert set(saved["tasks"]["heldout"]["metrics"]["accuracy"]["per_item"]) == {"d0", "d1", "p0", "s0", "t0", "t1"}
    rows = [json.loads(x) for x in (tmp_path / "eval/predictions/step-00000010.jsonl").read_text().splitlines()]
    assert [r["id"] for r in rows] == ["d0", "d1", "p0", "s0", "t0", "t1"]
    assert len(list((tmp_path / "eval/perturbed/heldout/image_noise").glob("*.png"))) == 5  # s0 has two
    # greedy evaluation is deterministic; a non-final step skips the robustness pass
    again = ev.evaluate(model, step=20).flat()
    assert {k: v for k, v in flat.items() if "robust:" not in k} == again
    assert ev.history[0]["step"] == 10 and ev.history[1]["step"] == 20


def test_budget_limits_and_stays_fixed(model, tokenizer, eval_set):
    table = suite_table(eval_set)
    table["budget"]["max_samples"] = 3
    table.pop("robustness")
    ev = Evaluator(parse_suite(table), tokenizer, max_length=128)
    ids = [r.id for r in ev.data["heldout"].records]
    assert len(ids) == 3 and ids == [r.id for r in Evaluator(parse_suite(table), tokenizer).data["heldout"].records]
    table["budget"]["max_seconds"] = 1e-9  # nothing fits: reported as truncated, not silently partial
    res = Evaluator(parse_suite(table), tokenizer, max_length=128).evaluate(model, step=1)
    assert res.truncated and res.tasks["heldout"]["truncated"]


def test_suite_errors_name_the_key(eval_set):
    table = suite_table(eval_set)
    table["tasks"][0]["metrcs"] = []
    with pytest.raises(EvalConfigError, match="unknown key.*metrcs"):
        parse_suite(table)
    table = suite_table(eval_set)
    table["tasks"][0]["metrics"] = ["blue"]
    with pytest.raises(EvalConfigError, match="unknown metric 'blue'"):
        parse_suite(table)
    table = suite_table(eval_set)
    table["slices"].append({"name": "len", "by": "audio_seconds"})
    with pytest.raises(EvalConfigError, match="needs bucket 'edges'"):
        parse_suite(table)
    with pytest.raises(EvalConfigError, match="image_blur.*unknown option"):
        parse_suite(suite_table(eval_set, perturbations=[{"type": "image_blur", "sigma": 2}]))

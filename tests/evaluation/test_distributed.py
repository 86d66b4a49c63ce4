"""Evaluation under a process group (gloo, 2 ranks): sharded items, gathered results, equal scores."""

import json

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def write_records(path):
    records = [{"id": f"t{i}", "task": "text_sum", "conversations": [
        {"from": "human", "value": f"What is {i} plus {i % 3}?"}, {"from": "gpt", "value": str(i + i % 3)}]}
        for i in range(5)]  # 5 items: ranks get 3 and 2, so one rank runs a padded batch
    path.write_text("".join(json.dumps(r) + "\n" for r in records))


def evaluate(data, out_file):
    from transformers import AutoModelForCausalLM, LlamaConfig

    from amylum.data.demo import demo_texts
    from amylum.data.tokenizer import build_demo_tokenizer
    from amylum.evaluation import Evaluator, parse_suite
    from amylum.models import MultimodalLM

    tok = build_demo_tokenizer(demo_texts(), vocab_size=300)
    torch.manual_seed(0)
    llm = AutoModelForCausalLM.from_config(LlamaConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=1,
                                                       num_attention_heads=2, intermediate_size=64))
    suite = parse_suite({"budget": {"batch_size": 2}, "tasks": [{"name": "qa", "data": str(data), "max_new_tokens": 3,
                                                                 "metrics": ["accuracy", "chrf"]}],
                         "slices": [{"name": "answer", "by": "answer_type"}]})
    res = Evaluator(suite, tok, max_length=64).evaluate(MultimodalLM(llm, {}).eval(), step=1)
    preds = res.tasks["qa"]["metrics"]["accuracy"]["per_item"]
    out_file.write_text(json.dumps({"flat": res.flat(), "ids": sorted(preds)}))


def worker(rank, world, init, data, out_dir):
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    try:
        evaluate(data, out_dir / f"rank{rank}.json")
    finally:
        dist.destroy_process_group()


@pytest.mark.timeout(240)
def test_two_ranks_match_one_process(tmp_path):
    data = tmp_path / "eval.jsonl"
    write_records(data)
    torch.set_num_threads(1)
    evaluate(data, tmp_path / "single.json")
    # fork: the children reuse the imported torch/transformers (spawn re-imports them: ~40 s here)
    mp.start_processes(worker, args=(2, f"file://{tmp_path / 'rendezvous'}", data, tmp_path), nprocs=2, join=True,
                       start_method="fork")
    single = json.loads((tmp_path / "single.json").read_text())
    for rank in range(2):
        got = json.loads((tmp_path / f"rank{rank}.json").read_text())
        assert got["ids"] == ["t0", "t1", "t2", "t3", "t4"]  # every rank holds all gathered items
        assert got["flat"] == pytest.approx(single["flat"])

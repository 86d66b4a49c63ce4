"""``amylum eval EXPORT SUITE --review N`` then ``amylum eval-import`` through the CLI entry points."""

import argparse
import json

from amylum.evaluation.commands import register


def run_cli(argv):
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args, [])


def test_eval_export_then_import(model, tokenizer, eval_set, tmp_path, capsys):
    from amylum.runtime.export import export_model

    export = tmp_path / "export"
    export_model(model, export)
    tokenizer.save_pretrained(str(export / "tokenizer"))
    suite = tmp_path / "suite.toml"
    suite.write_text(f'[budget]\nbatch_size = 4\n[[tasks]]\nname = "qa"\ndata = "{eval_set}"\nmax_new_tokens = 2\n'
                     'metrics = ["accuracy"]\n[[slices]]\nname = "modality"\nby = "modality"\n')
    out = tmp_path / "out"
    assert run_cli(["eval", str(export), str(suite), "--out", str(out), "--step", "7", "--review", "3"]) == 0
    printed = capsys.readouterr().out
    assert "qa/accuracy\t" in printed and "qa/accuracy/modality=image\t" in printed
    results = out / "step-00000007.json"
    review = out / "review" / "step-00000007" / "review.jsonl"
    assert results.is_file() and (review.parent / "review.html").is_file()
    rows = [json.loads(x) for x in review.read_text().splitlines()]
    assert len(rows) == 3
    for row in rows:
        row.update(human_score=1, annotator="bo")
    review.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert run_cli(["eval-import", str(results), str(review)]) == 0
    merged = json.loads(results.read_text())
    assert merged["tasks"]["qa"]["human"]["bo"]["value"] == 1.0
    assert merged["tasks"]["qa"]["human"]["bo"]["scorer"] == "human:bo"
    assert "qa/human:bo\t1.0000" in capsys.readouterr().out

"""The `amylum` command: help, config errors, and a smoke run of train → export → report."""

import contextlib
import io
import json
import runpy
import subprocess
import sys

import pytest

from amylum.cli import build_parser, main


def _run(*args, check=True):
    """``python -m amylum ARGS``: amylum/__main__.py run as ``-m`` runs it, with its exit status and
    output, but in this process: a new interpreter spends about 10 s importing torch and amylum per
    call (a fresh ``python -m amylum`` is what test_dist_train.py's torchrun test launches)."""
    out, err, argv = io.StringIO(), io.StringIO(), sys.argv
    sys.argv = ["amylum", *args]
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err), pytest.raises(SystemExit) as exit_:
            runpy.run_module("amylum", run_name="__main__", alter_sys=True)
    finally:
        sys.argv = argv
    code = exit_.value.code
    proc = subprocess.CompletedProcess(["amylum", *args], 0 if code is None else code, out.getvalue(), err.getvalue())
    if check:
        assert proc.returncode == 0, proc.stderr
    return proc


def test_help_lists_commands():
    out = _run("--help").stdout
    for cmd in ("train", "export", "report", "plan", "simulate", "eval"):
        assert cmd in out


def test_every_subcommand_has_help(capsys):
    parser = build_parser()
    commands = parser._subparsers._group_actions[0].choices
    for name in commands:
        with pytest.raises(SystemExit) as e:
            main([name, "--help"])
        assert e.value.code == 0
    assert "[training]" in capsys.readouterr().out  # train's help is the config reference


def test_print_config(capsys):
    assert main(["train", "--print-config", "--training.steps=5", "--model.preset", "tiny-valm"]) == 0
    out = capsys.readouterr().out
    assert "steps = 5" in out and 'preset = "tiny-valm"' in out


def test_missing_eval_suite_is_a_config_error(tmp_path, capsys):
    assert main(["train", "--print-config", f"--eval.suite={tmp_path / 'nope.toml'}"]) == 2
    assert "eval.suite" in capsys.readouterr().err
    bad = tmp_path / "suite.toml"
    bad.write_text('[[tasks]]\nname = "qa"\ndata = "x.jsonl"\nmetrcs = ["accuracy"]\n')
    assert main(["train", "--print-config", f"--eval.suite={bad}"]) == 2
    assert "metrcs" in capsys.readouterr().err  # the suite's own error, before anything is built


def test_config_error_exits_2_with_a_message():
    proc = _run("train", "--training.stepz=5", check=False)
    assert proc.returncode == 2
    assert "unknown key training.stepz" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_unknown_argument_of_other_commands_is_an_error(capsys):
    with pytest.raises(SystemExit) as e:
        main(["report", "somewhere", "--training.lr=1"])
    assert e.value.code == 2


def test_train_export_report_smoke(tmp_path):
    run = tmp_path / "run"
    args = [
        "train", f"--job.run_dir={run}", "--training.steps=4", "--training.warmup_steps=1",
        "--training.batch_size=4", "--data.n_train=16", "--data.n_eval=4", "--eval.every=2",
        "--checkpoint.every=2", "--metrics.log_every=1", "--metrics.progress_bar=false",
    ]
    assert main(args) == 0
    summary = json.loads((run / "summary.json").read_text())
    assert summary["completed"] and summary["steps"] == 4 and "heldout/accuracy" in summary["eval"]
    for name in ("config.toml", "metrics.jsonl", "report.md", "report.html", "report.json", "plots/loss.png",
                 "export/amylum.json"):
        assert (run / name).is_file(), name
    assert list((run / "tensorboard").iterdir())
    assert [p.name for p in sorted((run / "checkpoints").iterdir())] == ["step-00000002", "step-00000004"]
    # Running again resumes at the end: nothing to do, same result.
    assert main(args) == 0
    assert main(["export", str(run), "--out", str(tmp_path / "exp")]) == 0
    assert (tmp_path / "exp" / "llm" / "config.json").is_file()
    (run / "report.html").unlink()
    assert main(["report", str(run)]) == 0
    assert (run / "report.html").is_file()  # regenerated from the run's files

import pytest

from amylum.config import Config, ConfigError, load_config, reference, to_toml


def _write(tmp_path, text):
    p = tmp_path / "c.toml"
    p.write_text(text)
    return p


def test_defaults_are_the_demo_and_valid():
    cfg = load_config()
    assert cfg.model.preset == "tiny-vlm"
    assert cfg.data.demo == "auto"
    assert cfg.job.run_dir == "runs/tiny-vlm"  # "" resolves per preset


def test_file_then_overrides(tmp_path):
    p = _write(tmp_path, '[training]\nlr = 1e-4\nsteps = 50\n[model]\npreset = "tiny-valm"\n')
    cfg = load_config(p, ["--training.steps=7", "--training.betas=[0.8, 0.9]", "--job.run_dir=out dir"])
    assert cfg.training.lr == 1e-4 and cfg.training.steps == 7 and cfg.training.betas == [0.8, 0.9]
    assert cfg.model.preset == "tiny-valm" and cfg.job.run_dir == "out dir"
    assert load_config(None, ["--training.lr", "2e-4"]).training.lr == 2e-4  # space-separated form
    assert load_config(None, ["--training.lr=1"]).training.lr == 1.0  # int → float is lossless


def test_round_trip_through_toml(tmp_path):
    cfg = load_config(None, ["--training.steps=9", "--model.llm=frozen", "--data.n_eval=0"])
    again = load_config(_write(tmp_path, to_toml(cfg)))
    assert again == cfg


@pytest.mark.parametrize(
    "text, overrides, match",
    [
        ("[trainig]\nlr = 1\n", [], r"unknown section \[trainig\]"),
        ("[training]\nlearning_rate = 1\n", [], "unknown key training.learning_rate"),
        ('[training]\nsteps = "ten"\n', [], "training.steps: expected int, got str"),
        ("[training]\nsteps = 1.5\n", [], "training.steps: expected int"),
        ("[training]\ndeterministic = 1\n", [], "expected bool"),
        ("training = 3\n", [], "must be a table"),
        ("[training\n", [], "not valid TOML"),
        ("", ["--training.lr=fast"], "training.lr: expected float, got str 'fast'"),
        ("", ["--nope.x=1"], "unknown section 'nope'"),
        ("", ["--training.lr"], "must look like --section.key=value"),
        ("", ["--lr=1"], "the key must be section.key"),
        ("", ["--training.warmup_steps=-1"], "training.warmup_steps = -1; must be >= 0"),
        ("", ["--training.steps=0"], "training.steps = 0; must be > 0"),
        ("", ["--training.precision=fp16"], "training.precision = 'fp16'; expected one of"),
        ("", ["--job.device=cpu", "--training.precision=bf16"], "needs a GPU"),
        ("", ["--model.llm=frozen", "--model.encoders=frozen", "--model.projectors=frozen"], "nothing would train"),
        ("", ["--data.demo=none"], "needs data.path"),
        ("", ["--data.path=x.jsonl"], "set --data.demo=none"),
        ("", ["--checkpoint.resume=/no/such/ckpt"], "checkpoint.resume"),
        ("", ["--training.betas=[0.9]"], "training.betas"),
    ],
)
def test_errors_name_the_problem(tmp_path, text, overrides, match):
    with pytest.raises(ConfigError, match=match):
        load_config(_write(tmp_path, text) if text else None, overrides)


def test_missing_file():
    with pytest.raises(ConfigError, match="config file not found: nope.toml"):
        load_config("nope.toml")


def test_real_data_paths_must_exist(tmp_path):
    with pytest.raises(ConfigError, match="data.path: .* does not exist"):
        load_config(None, ["--data.demo=none", f"--data.path={tmp_path}/r.jsonl", f"--data.tokenizer={tmp_path}"])


def test_preset_checks_before_building():
    from amylum.runtime.build import check_config

    with pytest.raises(ConfigError, match="known presets"):
        check_config(load_config(None, ["--model.preset=gpt-17"]))
    with pytest.raises(ConfigError, match="needs an audio encoder"):
        check_config(load_config(None, ["--data.demo=valm"]))
    check_config(load_config(None, ["--model.preset=tiny-valm"]))


def test_reference_lists_every_key():
    text = reference()
    for section in ("job", "model", "data", "training", "eval", "checkpoint", "metrics"):
        assert f"[{section}]" in text
    assert "lr (float, default 0.001)" in text or "lr (float" in text
    assert isinstance(Config(), Config)

"""End to end: `amylum select` on a 2 × 2 zoo of tiny models, a few steps each (seconds)."""

import json

from amylum.cli import main

ZOO = """
[job]
out_dir = "{out}"
[data]
n_train = 48
n_eval = 12
metric = "loss"
[training]
batch_size = 8
warmup_steps = 1
[clustering]
t_ve = 1.0      # every model its own cluster: 4 candidate clusters, so halving has work
t_llm = 1.0
cka_samples = 8
warmup_steps = 2
[halving]
initial_fraction = 0.25
max_fraction = 0.5
min_survivors = 2
[scaling]
start_fraction = 0.25
min_points = 3
max_loss = 10.0
[[encoders]]
name = "sig"
config = {{ model_type = "siglip_vision_model", hidden_size = 32, intermediate_size = 64, num_hidden_layers = 1, num_attention_heads = 2, image_size = 16, patch_size = 8, vision_use_head = false }}
seed = 1
[[encoders]]
name = "vit"
config = {{ model_type = "vit", hidden_size = 32, intermediate_size = 64, num_hidden_layers = 1, num_attention_heads = 2, image_size = 16, patch_size = 8 }}
seed = 2
[[llms]]
name = "llama"
config = {{ model_type = "llama", hidden_size = 32, intermediate_size = 64, num_hidden_layers = 1, num_attention_heads = 2, num_key_value_heads = 1, max_position_embeddings = 256, tie_word_embeddings = true }}
seed = 1
[[llms]]
name = "qwen"
config = {{ model_type = "qwen2", hidden_size = 32, intermediate_size = 64, num_hidden_layers = 1, num_attention_heads = 2, num_key_value_heads = 1, max_position_embeddings = 256, tie_word_embeddings = true }}
seed = 2
"""


def test_select_end_to_end(tmp_path, capsys):
    out = tmp_path / "sel"
    cfg = tmp_path / "zoo.toml"
    cfg.write_text(ZOO.format(out=out))
    assert main(["select", str(cfg)]) == 0
    assert "selected" in capsys.readouterr().out
    result = json.loads((out / "selection.json").read_text())
    assert (out / "report.md").is_file() and (out / "search.png").stat().st_size > 1000
    assert len(result["clusters"]) == 4
    # halving 4 → 2 clusters; the survivors' representatives resumed their rung-1 checkpoints
    assert len(result["rungs"]) == 1 and len(result["rungs"][0]["pruned"]) == 2
    survivors = result["rungs"][0]["kept"]
    scaling = [o for o in result["observations"] if o["stage"] == "scaling" and o["pair"] in survivors]
    assert scaling and scaling[0]["resumed_from"] == 2  # rung 1 trained 0.25 × 6 steps ≈ 2 steps
    assert any(d["stage"] == "halving" and "pruned" in d["decision"] for d in result["decisions"])
    assert result["selected"] in survivors
    ranks = [r["pair"] for r in result["ranking"]]
    assert sorted(ranks) == sorted(f"{e}+{l}" for e in ("sig", "vit") for l in ("llama", "qwen"))
    assert result["cost"]["grid_steps_estimate"] == 4 * result["full_steps"]
    assert result["cost"]["steps"] > 0 and "| rank | pair |" in (out / "report.md").read_text()


def test_config_errors_are_clear(tmp_path, capsys):
    cfg = tmp_path / "bad.toml"
    cfg.write_text('[clustering]\nt_ve = 2.0\n[[encoders]]\nname = "e"\npreset = "tiny-vlm"\n[[llms]]\nname = "l"\npreset = "tiny-vlm"\n')
    assert main(["select", str(cfg)]) == 2
    assert "t_ve" in capsys.readouterr().err
    cfg.write_text('[[encoders]]\nname = "e"\n[[llms]]\nname = "l"\npreset = "tiny-vlm"\n')
    assert main(["select", str(cfg)]) == 2
    assert "exactly one of preset, config or path" in capsys.readouterr().err

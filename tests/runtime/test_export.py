"""Export round-trip: every part loads with transformers' own from_pretrained, the whole model with load_export."""

import torch
import transformers
from runtime_standins import vision_batch as _batch

from amylum.models import build_preset
from amylum.runtime.export import export_model, load_export


def test_export_round_trip(tmp_path):
    model = build_preset("tiny-vlm", vocab_size=64, seed=0)
    with torch.no_grad():  # move away from the init, so a silently re-initialised part shows
        for p in model.parameters():
            p.add_(0.01 * torch.randn_like(p))
    model.eval()
    out = export_model(model, tmp_path / "export")
    assert (out / "amylum.json").is_file()
    assert not [p for p in out.rglob("*") if p.suffix in (".bin", ".pt", ".pkl", ".pth")]

    # Each part on its own, through transformers' from_pretrained.
    llm = transformers.AutoModelForCausalLM.from_pretrained(out / "llm")
    for k, v in model.llm.state_dict().items():
        assert torch.equal(v, llm.state_dict()[k]), k
    enc = transformers.SiglipVisionModel.from_pretrained(out / "encoders" / "vision")
    for k, v in model.encoders["vision"].encoder.state_dict().items():
        assert torch.equal(v, enc.state_dict()[k]), k

    # The whole composition.
    back = load_export(out).eval()
    assert back.state_dict().keys() == model.state_dict().keys()
    batch = _batch(model, 64)
    with torch.no_grad():
        assert torch.equal(model(batch).loss, back(batch).loss)
        assert model.generate(batch, max_new_tokens=3) == back.generate(batch, max_new_tokens=3)


def test_export_of_a_lora_llm_is_merged(tmp_path):
    from amylum.models import FreezeSpec, apply_freeze

    model = build_preset("tiny-vlm", vocab_size=64, seed=0)
    apply_freeze(model, FreezeSpec(llm="lora"))
    with torch.no_grad():
        for name, p in model.llm.named_parameters():
            if "lora_B" in name:
                p.normal_()  # LoRA B starts at zero; make the adapter matter
    model.eval()
    out = export_model(model, tmp_path / "export")
    back = load_export(out).eval()
    assert not hasattr(back.llm, "peft_config")
    batch = _batch(model, 64)
    with torch.no_grad():
        torch.testing.assert_close(model(batch).loss, back(batch).loss, rtol=1e-4, atol=1e-4)

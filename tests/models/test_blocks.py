import torch

from amylum.models import build_preset
from amylum.parallel.blocks import checkpoint_blocks, component_blocks, find_layer_list
from model_batches import build_batch, random_inputs


def test_block_lists_found_through_model_layer_lists():
    model = build_preset("tiny-valm", vocab_size=64)
    found = {name: len(blocks) for name, blocks in component_blocks(model)}
    assert found == {"llm": 2, "vision": 2, "audio": 2}
    assert find_layer_list(model.llm) is model.llm.model.layers


def test_checkpointed_blocks_give_the_same_gradients():
    torch.manual_seed(0)
    model = build_preset("tiny-vlm", vocab_size=64)
    rows = [[("a", [("text", [5, 6], False), ("vision", 16), ("text", [7, 8, 9], True)])]]
    batch = build_batch(rows, ["vision"], random_inputs(model, torch.Generator().manual_seed(0)))
    model(batch).loss.backward()
    plain = [p.grad.clone() for p in model.llm.parameters()]
    model.zero_grad()
    assert checkpoint_blocks(model, every=1) == 2
    model(batch).loss.backward()
    assert all(torch.allclose(a, p.grad, atol=1e-6) for a, p in zip(plain, model.llm.parameters()))

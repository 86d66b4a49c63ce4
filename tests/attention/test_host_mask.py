"""A device batch's attention mask is built and validated on the host (from the ids its
BatchIndex keeps there) and copied asynchronously: the same mask, and no device-to-host read."""

import pytest
import torch

from amylum.attention import integration
from amylum.attention.integration import attention_inputs
from amylum.attention.mask import MaskSpec, mask_spec
from amylum.attention.synthetic import random_multimodal_batch
from amylum.data.batch import IGNORE_INDEX, MultimodalBatch


def _batch(seed: int, rows: int = 3, seq: int = 200) -> MultimodalBatch:
    ids = random_multimodal_batch(torch.Generator().manual_seed(seed), rows, seq, max_segment=40)
    kinds = (ids.segment_ids >= 0).long()
    labels = torch.where(kinds == 0, torch.arange(rows * seq).view(rows, seq) % 50, torch.full_like(kinds, IGNORE_INDEX))
    return MultimodalBatch(input_ids=labels.clamp_min(0), labels=labels, position_ids=ids.position_ids,
                           sample_ids=ids.sample_ids, segment_ids=ids.segment_ids, kinds=kinds, modalities=("vision",))


@pytest.mark.parametrize("mode", ["multimodal", "causal"])
def test_device_batch_takes_its_mask_from_the_host_ids(monkeypatch, mode):
    batch = _batch(0)
    moved = batch.to("meta")  # a device batch (meta: no values, so nothing can be read back from it)
    assert moved.index is not None and moved.index.host_sample_ids.device.type == "cpu"
    built = {}
    to = MaskSpec.to

    def spy(self, device, non_blocking=False):
        built.update(spec=self, non_blocking=non_blocking)
        return to(self, device, non_blocking)

    monkeypatch.setattr(MaskSpec, "to", spy)
    spec = integration._host_mask_spec(moved, mode)
    assert spec.lo.device.type == "meta" and built["non_blocking"]
    want = mask_spec(batch, mode)
    assert torch.equal(built["spec"].lo, want.lo) and torch.equal(built["spec"].hi, want.hi)


def test_host_validation_still_refuses_a_split_segment():
    batch = _batch(1)
    row = batch.segment_ids[0]
    seg = int(row[row >= 0][0])
    first = int((row == seg).nonzero()[0])
    batch.segment_ids[0, first + 60] = seg  # a second run of the same segment id, further on
    batch.sample_ids[0, first + 60] = batch.sample_ids[0, first]
    with pytest.raises(ValueError, match="split into several runs|crosses a sample boundary"):
        integration._host_mask_spec(batch.to("meta"), "multimodal")


def test_cpu_batch_and_batch_without_index_use_the_device_path():
    batch = _batch(2)
    assert integration._host_mask_spec(batch, "multimodal") is None  # already on the host
    batch.index = None
    assert integration._host_mask_spec(batch, "multimodal") is None


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_flex_mask_equals_the_device_built_one_without_syncs(monkeypatch):
    for seed in range(4):
        batch = _batch(seed, rows=2, seq=700).to("cuda", non_blocking=True)
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
        try:
            host = attention_inputs(batch, backend="flex")["attention_mask"]
        finally:
            torch.cuda.set_sync_debug_mode("default")
        monkeypatch.setattr(integration, "_host_mask_spec", lambda b, m: None)
        device = attention_inputs(batch, backend="flex")["attention_mask"]
        monkeypatch.undo()
        assert torch.equal(host.to_dense(), device.to_dense())

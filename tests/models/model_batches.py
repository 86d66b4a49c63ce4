"""Hand-built MultimodalBatches for model tests (independent of the data path's processor)."""

from __future__ import annotations

import torch

from amylum.data.batch import IGNORE_INDEX, MultimodalBatch


def build_batch(rows, modalities, inputs_for, *, pad_to=None, pad_id=0):
    """rows: list of rows; a row is a list of samples; a sample is (record_id, parts) where a part is
    ("text", [ids], train: bool) or (modality, n_tokens). ``inputs_for(modality, n_items)`` returns the
    encoder input dict for that many items."""
    fields = {k: [] for k in ("input_ids", "labels", "position_ids", "sample_ids", "segment_ids", "kinds")}
    item_tokens = {m: [] for m in modalities}
    item_records = {m: [] for m in modalities}
    records = []
    for row in rows:
        f = {k: [] for k in fields}
        seg = 0
        row_records = []
        for sid, (rec, parts) in enumerate(row):
            row_records.append(rec)
            pos = 0
            for part in parts:
                if part[0] == "text":
                    ids, train = part[1], part[2]
                    for j, t in enumerate(ids):
                        f["input_ids"].append(t)
                        first = pos == 0
                        f["labels"].append(t if train and not first else IGNORE_INDEX)
                        f["position_ids"].append(pos)
                        f["sample_ids"].append(sid)
                        f["segment_ids"].append(-1)
                        f["kinds"].append(0)
                        pos += 1
                else:
                    modality, n = part
                    kind = modalities.index(modality) + 1
                    for _ in range(n):
                        f["input_ids"].append(pad_id)
                        f["labels"].append(IGNORE_INDEX)
                        f["position_ids"].append(pos)
                        f["sample_ids"].append(sid)
                        f["segment_ids"].append(seg)
                        f["kinds"].append(kind)
                        pos += 1
                    seg += 1
                    item_tokens[modality].append(n)
                    item_records[modality].append(rec)
        records.append(row_records)
        for k in fields:
            fields[k].append(f[k])
    width = pad_to or max(len(r) for r in fields["input_ids"])
    pad_values = {"input_ids": pad_id, "labels": IGNORE_INDEX, "position_ids": 0, "sample_ids": -1, "segment_ids": -1, "kinds": 0}
    tensors = {k: torch.tensor([r + [pad_values[k]] * (width - len(r)) for r in v]) for k, v in fields.items()}
    encoder_inputs = {m: inputs_for(m, len(item_tokens[m])) for m in modalities if item_tokens[m]}
    return MultimodalBatch(
        **tensors,
        modalities=tuple(modalities),
        encoder_inputs=encoder_inputs,
        item_tokens={m: v for m, v in item_tokens.items() if v},
        item_records={m: v for m, v in item_records.items() if v},
        records=records,
    )


def random_inputs(model, generator=None):
    """An ``inputs_for`` callback producing random encoder inputs that match the model's specs."""
    def inputs_for(modality, n):
        enc = model.encoders[modality]
        dummy = enc.dummy_inputs(torch.device("cpu"))
        name, t = next(iter(dummy.items()))
        return {name: torch.randn((n, *t.shape[1:]), generator=generator)}

    return inputs_for

"""Pipeline stages cut from a MultimodalLM through the models' own layer lists.

An encoder stage runs one modality branch (encoder + projector) and sends its projected
features. LLM stages keep the HF model whole but hold only their slice of its layer list, with
the final norm replaced by identity on all but the last stage, and run the model's *own*
forward on ``inputs_embeds``: rotary embeddings, masks and layer calls stay HF's, so no
forward function of any family is copied. The first LLM stage also embeds tokens and scatters
the encoders' features (received from encoder stages, or computed by colocated encoders); the
last computes the fused loss.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from amylum.data.batch import MultimodalBatch
from amylum.parallel.blocks import find_layer_list

LLM = "llm"


@dataclass(frozen=True)
class StageAssignment:
    """What one pipeline stage holds.

    ``component``: a modality name (an encoder stage) or ``"llm"``. For LLM stages,
    ``layers = (start, end)`` of the LLM's layer list, and ``colocated`` lists encoders that run
    on this stage instead of on stages of their own (only on the first LLM stage).
    """

    stage: int
    component: str
    layers: tuple[int, int] | None = None
    colocated: tuple[str, ...] = field(default_factory=tuple)


def validate_assignments(model: nn.Module, assignments: list[StageAssignment]) -> None:
    """Every encoder exactly once, LLM layers covered contiguously in stage order; clear errors otherwise."""
    stages = [a.stage for a in assignments]
    if sorted(stages) != list(range(len(assignments))):
        raise ValueError(f"stage ids must be 0..{len(assignments) - 1} exactly once, got {sorted(stages)}")
    seen: list[str] = []
    for a in assignments:
        if a.component != LLM:
            if a.component not in model.encoders:
                raise ValueError(f"stage {a.stage} names encoder {a.component!r}; the model has {list(model.encoders)}")
            seen.append(a.component)
        seen += list(a.colocated)
    missing = sorted(set(model.encoders) - set(seen))
    dup = sorted({m for m in seen if seen.count(m) > 1})
    if missing or dup:
        raise ValueError(f"each encoder needs exactly one stage: missing {missing}, duplicated {dup}")
    llm = sorted((a for a in assignments if a.component == LLM), key=lambda a: a.layers[0] if a.layers else -1)
    n_layers = len(find_layer_list(model.llm))
    expect = 0
    for i, a in enumerate(llm):
        if a.layers is None:
            raise ValueError(f"LLM stage {a.stage} needs layers=(start, end)")
        if a.layers[0] != expect or a.layers[1] <= a.layers[0]:
            raise ValueError(f"LLM stage {a.stage} holds layers {a.layers}; expected to start at {expect}")
        if a.colocated and i != 0:
            raise ValueError(f"encoders can be colocated only with the first LLM stage, not stage {a.stage}")
        expect = a.layers[1]
    if expect != n_layers:
        raise ValueError(f"LLM stages cover layers 0..{expect}, the LLM has {n_layers}")
    if llm and llm[0].stage < max((a.stage for a in assignments if a.component != LLM), default=-1):
        raise ValueError("encoder stages must come before the LLM's stages (they feed its first stage)")
    model_type = getattr(model.llm.config, "model_type", "")
    if len(llm) > 1 and model_type.startswith("gemma"):
        # Gemma scales inputs_embeds inside its own forward, which would rescale received hidden states.
        raise ValueError(f"pipeline-splitting {model_type} LLMs is not supported yet")


class _EncoderHolder(nn.Module):
    """Holds one modality branch under ``encoders.<name>``, as the MultimodalLM does, so a stage's
    parameter names (``model.…``) are the full model's: checkpoints of any plan load into any other
    plan, into one process and into ``amylum export``."""

    def __init__(self, modality: str, branch: nn.Module) -> None:
        super().__init__()
        self.encoders = nn.ModuleDict({modality: branch})


class EncoderStage(nn.Module):
    def __init__(self, model: nn.Module, modality: str) -> None:
        super().__init__()
        self.modality = modality
        self.model = _EncoderHolder(modality, model.encoders[modality])
        self.width = model.llm.config.get_text_config().hidden_size
        # Under FSDP every replica of this stage must run the encoder every microbatch, even one
        # with none of its items (DESIGN §4.4): the model's flag, set by the runtime, says so.
        self.run_idle = bool(getattr(model, "run_idle_encoders", False))

    @property
    def branch(self) -> nn.Module:
        return self.model.encoders[self.modality]

    def forward(self, batch: MultimodalBatch, received: dict[int, torch.Tensor], num_items_in_batch=None) -> torch.Tensor:
        inputs = batch.encoder_inputs.get(self.modality)
        if not inputs or not batch.item_tokens.get(self.modality):
            # Nothing of this modality in the microbatch: an empty message keeps the schedule's
            # SEND/RECV pairs intact. Idle mode still runs the encoder on a dummy item, and the
            # empty message depends on it (times zero), so backward reaches the sharded encoder.
            dtype = next(self.branch.parameters()).dtype
            device = next(self.branch.parameters()).device
            empty = torch.zeros(0, 1, self.width, dtype=dtype, device=device)
            if not self.run_idle:
                return empty
            idle = self.branch(**self.branch.dummy_inputs(device))
            return empty + 0.0 * idle.sum().to(dtype)
        return self.branch(**inputs)


class _StageLayers(nn.ModuleList):
    """A stage's slice of the LLM's blocks, named by their index in the whole model (``layers.5``
    stays ``layers.5``), so stage checkpoints never collide and load into the whole model.
    Positional access (``[0]``, slices, iteration) still sees the slice, as HF's forward expects."""

    def __init__(self, blocks: list[nn.Module], start: int) -> None:
        super().__init__()
        for i, block in enumerate(blocks):
            self.add_module(str(start + i), block)

    def __getitem__(self, idx):
        blocks = list(self._modules.values())
        return nn.ModuleList(blocks[idx]) if isinstance(idx, slice) else blocks[idx]

    def __setitem__(self, idx: int, module: nn.Module) -> None:
        setattr(self, list(self._modules)[idx], module)


class LLMStage(nn.Module):
    """A slice of the LLM's layers; first stage embeds, last stage computes the loss."""

    def __init__(self, model: nn.Module, assignment: StageAssignment, first: bool, last: bool, feeders: dict[int, str]):
        super().__init__()
        start, end = assignment.layers
        decoder = model.llm.get_decoder()
        blocks = find_layer_list(decoder)
        decoder.layers = _StageLayers(list(blocks)[start:end], start) if blocks is decoder.layers else _fail_layers(decoder)
        if not last:
            decoder.norm = nn.Identity()
        for name in list(model.encoders):
            if name not in assignment.colocated:
                del model.encoders[name]
        self.model = model
        self.first, self.last = first, last
        self.feeders = feeders  # peer stage → modality whose features it sends (first stage only)

    def unused_parameters(self) -> list[nn.Parameter]:
        """Parameters this stage holds but never uses: the input embedding off the first stage and
        the LM head off the last (HF keeps both in every copy of the model). A tied embedding is
        used by the first and the last stage alike."""
        llm = self.model.llm
        embedding = llm.get_input_embeddings().weight
        head = llm.get_output_embeddings()
        used = set()
        if self.first:
            used.add(id(embedding))
        if self.last and head is not None:
            used.add(id(head.weight))
        out, seen = [], set()
        for p in (embedding, head.weight if head is not None else None):
            if p is not None and id(p) not in used and id(p) not in seen:
                seen.add(id(p))
                out.append(p)
        return out

    def forward(self, batch: MultimodalBatch, received: dict[int, torch.Tensor], num_items_in_batch=None):
        if self.first:
            features = {self.feeders[p]: t for p, t in received.items()}
            hidden = self.model.embed(batch, features=features)
        else:
            (hidden,) = received.values()
        states = self.model.decode(hidden, batch)
        if self.last:
            return self.model.loss_from_states(states, batch, num_items_in_batch=num_items_in_batch).loss
        return states


def _fail_layers(decoder: nn.Module):
    raise ValueError(f"{type(decoder).__name__} keeps its blocks outside `.layers`; pipeline stages need it there")


def build_stage(model: nn.Module, assignments: list[StageAssignment], stage: int) -> nn.Module:
    """This rank's stage module, cut from ``model`` in place (other stages' parts are dropped)."""
    validate_assignments(model, assignments)
    by_stage = {a.stage: a for a in assignments}
    a = by_stage[stage]
    if a.component != LLM:
        return EncoderStage(model, a.component)
    llm_stages = sorted((x for x in assignments if x.component == LLM), key=lambda x: x.layers[0])
    first, last = llm_stages[0].stage == stage, llm_stages[-1].stage == stage
    feeders = {x.stage: x.component for x in assignments if x.component != LLM} if first else {}
    return LLMStage(model, a, first, last, feeders)


def stage_graph_inputs(assignments: list[StageAssignment]) -> dict[int, tuple[int, ...]]:
    """Which stages feed which: encoder stages → first LLM stage; LLM stages in a chain."""
    llm_stages = sorted((x for x in assignments if x.component == LLM), key=lambda x: x.layers[0])
    inputs = {a.stage: () for a in assignments}
    inputs[llm_stages[0].stage] = tuple(sorted(a.stage for a in assignments if a.component != LLM))
    for prev, cur in zip(llm_stages, llm_stages[1:]):
        inputs[cur.stage] = (prev.stage,)
    return inputs

"""MultimodalLM: named modality encoders (+ projectors) feeding one HF causal LM.

The LLM is driven only through its public interface: ``inputs_embeds``, ``position_ids``,
``labels`` and the attention backend registered with transformers' ``AttentionInterface``
(``amylum.attention``). No forward function of any HF family is copied, so every causal LM
family that transformers supports works, and keeps working across releases.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Mapping

import torch
from torch import nn

from amylum.attention import attention_inputs, setup_llm_attention
from amylum.data.batch import IGNORE_INDEX, BatchIndex, MultimodalBatch
from amylum.models.encoder import ModalityEncoder
from amylum.models.loss import fused_linear_cross_entropy
from amylum.models.modality import ModalityInputSpec
from amylum.models.target_rows import TargetRowsFeedForward


@dataclass
class MultimodalOutput:
    loss: torch.Tensor | None
    logits: torch.Tensor | None
    num_target_tokens: torch.Tensor  # tokens that carry a label after the shift (the loss's denominator)


def _logit_transform(llm: nn.Module) -> dict:
    """What some families do between the LM head and the loss, read from their configs.

    Gemma-2 soft-caps logits, Cohere multiplies them by ``logit_scale``, Granite divides them by
    ``logits_scaling``; the fused loss applies the same transform so it equals HF's own loss.
    """
    config = llm.config.get_text_config() if hasattr(llm.config, "get_text_config") else llm.config
    scale = 1.0
    if getattr(config, "logit_scale", None) is not None:
        scale *= float(config.logit_scale)
    if getattr(config, "logits_scaling", None) is not None:
        scale /= float(config.logits_scaling)
    return {"scale": scale, "softcap": getattr(config, "final_logit_softcapping", None)}


def llm_hidden_size(llm: nn.Module) -> int:
    config = llm.config
    text_config = config.get_text_config() if hasattr(config, "get_text_config") else config
    return text_config.hidden_size


class MultimodalLM(nn.Module):
    """Encoders (by modality name) + one causal LM.

    Args:
        llm: an HF causal LM (``AutoModelForCausalLM`` family) or a peft wrapper of one.
        encoders: modality name → ``ModalityEncoder``. The order fixes the ``kinds`` ids.
        attention_backend: ``"reference"`` (dense mask, CPU), ``"flex"`` (GPU) … see
            ``amylum.attention``; ``"hf"`` keeps the model's own attention (plain causal).
        mask_mode: ``"multimodal"`` (bidirectional inside each image/clip, DESIGN §5) or ``"causal"``.
        run_idle_encoders: run an encoder on a zero input when a batch has none of its items
            and add its output times zero, so every rank of a sharded encoder runs the same
            collectives each step (DESIGN §4.4). The distributed runtime turns this on.
        loss_impl: ``"fused"`` (chunked LM head + cross-entropy on target positions only,
            ``models/loss.py``) or ``"hf"`` (the LLM's own ``labels`` path, full logits).
        loss_chunk_size: target positions per chunk of the fused loss. 4,096 holds the GPU
            benchmark's targets in one chunk (1.2 GB of bf16 logits for a 152k vocabulary), where
            the head's weight gradient needs no fp32 accumulator (``models/loss.py``).
        validate_inputs: check, per sample, that placeholder tokens and encoder feature
            tokens agree before scattering (a host round-trip; the data path guarantees it
            too, so a tuned GPU step may switch it off).
        last_block_targets_only: with the fused loss, the LLM's last block runs its MLP only
            on the rows the loss reads (``models/target_rows.py``); the loss and every
            gradient are unchanged.
    """

    def __init__(
        self,
        llm: nn.Module,
        encoders: Mapping[str, ModalityEncoder] | None = None,
        *,
        attention_backend: str = "reference",
        mask_mode: str = "multimodal",
        run_idle_encoders: bool = False,
        validate_inputs: bool = True,
        loss_impl: str = "fused",
        loss_chunk_size: int = 4096,
        last_block_targets_only: bool = True,
    ) -> None:
        super().__init__()
        if mask_mode not in ("multimodal", "causal"):
            raise ValueError(f"mask_mode must be 'multimodal' or 'causal', got {mask_mode!r}")
        self.llm = llm
        self.encoders = nn.ModuleDict(dict(encoders or {}))
        self.attention_backend = attention_backend
        self.mask_mode = mask_mode
        self.run_idle_encoders = run_idle_encoders
        self.validate_inputs = validate_inputs
        if loss_impl not in ("fused", "hf"):
            raise ValueError(f"loss_impl must be 'fused' or 'hf', got {loss_impl!r}")
        self.loss_impl, self.loss_chunk_size = loss_impl, loss_chunk_size
        self._logit_transform = _logit_transform(llm)
        self.last_block_targets_only = last_block_targets_only
        self._target_rows = TargetRowsFeedForward.attach(llm)
        hidden = llm_hidden_size(llm)
        for name, enc in self.encoders.items():
            if not isinstance(enc, ModalityEncoder):
                raise TypeError(f"encoder {name!r} must be a ModalityEncoder, got {type(enc).__name__}")
            out_dim = getattr(enc.projector, "out_dim", None)
            if out_dim is not None and out_dim != hidden:
                raise ValueError(f"projector of {name!r} outputs width {out_dim}, but the LLM's hidden size is {hidden}")
        setup_llm_attention(self.llm, attention_backend)

    # -- description -----------------------------------------------------------------------
    @property
    def modalities(self) -> tuple[str, ...]:
        return tuple(self.encoders.keys())

    def modality_specs(self) -> dict[str, ModalityInputSpec]:
        """Modality name → input spec, in ``kinds`` order (modalities[i] ↔ kind i + 1)."""
        return {name: enc.input_spec for name, enc in self.encoders.items()}

    def parameter_counts(self) -> dict[str, int]:
        counts = {"llm": sum(p.numel() for p in self.llm.parameters())}
        for name, enc in self.encoders.items():
            counts[f"{name}.encoder"] = sum(p.numel() for p in enc.encoder.parameters())
            counts[f"{name}.projector"] = sum(p.numel() for p in enc.projector.parameters())
        counts["total"] = sum(p.numel() for p in self.parameters())
        counts["trainable"] = sum(p.numel() for p in self.parameters() if p.requires_grad)
        return counts

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.parameters() if p.requires_grad]

    # -- forward -----------------------------------------------------------------------------
    def _check_placeholders(self, batch: MultimodalBatch, kind: int, name: str) -> None:
        tokens, records = batch.item_tokens.get(name, []), batch.item_records.get(name, [])
        expected: Counter = Counter()
        for rec, n in zip(records, tokens):
            expected[rec] += n
        positions = (batch.kinds == kind).cpu()
        sample_ids = batch.sample_ids.cpu()
        actual: Counter = Counter()
        if batch.records:
            rows, cols = positions.nonzero(as_tuple=True)
            for (row, sid), n in Counter(zip(rows.tolist(), sample_ids[rows, cols].tolist())).items():
                actual[batch.records[row][sid]] += n
        else:
            actual["<batch>"] = int(positions.sum())
            expected = Counter({"<batch>": sum(tokens)})
        for rec in sorted(set(expected) | set(actual)):
            if expected[rec] != actual[rec]:
                raise ValueError(
                    f"sample {rec!r}: {actual[rec]} {name} placeholder tokens in the sequence but "
                    f"{expected[rec]} {name} feature tokens from its items"
                )

    def _embed_tokens(self, embedding: nn.Module, input_ids: torch.Tensor) -> torch.Tensor:
        """The token embeddings; their weight gradient is sparse when the LM head shares the weight.

        With tied weights (Qwen2-1.5B, the tiny presets) the head's dense gradient and the
        lookup's gradient meet in autograd's buffer. The lookup's as a dense tensor is a zero-filled
        vocabulary × hidden array plus a full-size add (0.67 ms per step for Qwen2-1.5B in an H100
        profile); as rows of a sparse tensor it is added by index to a copy of the head's gradient,
        with no zero-filled array (0.4 GiB less peak memory in bench/gpu_step.py). Only for a plain CUDA
        ``nn.Embedding`` (no padding index: that would read the device) whose head is amylum's
        fused loss, so the summed gradient stays dense for the optimizer."""
        weight = getattr(embedding, "weight", None)
        head = self.llm.get_output_embeddings()
        if (
            self.loss_impl == "fused" and type(embedding) is nn.Embedding and type(weight) is nn.Parameter
            and weight.is_cuda and weight.requires_grad and head is not None and head.weight is weight
            and embedding.padding_idx is None and embedding.max_norm is None and not embedding.scale_grad_by_freq
        ):
            return nn.functional.embedding(input_ids, weight, sparse=True)
        return embedding(input_ids)

    def embed(self, batch: MultimodalBatch, features: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
        """Token embeddings with every modality's projected features scattered into its positions.

        ``features``: projected features computed elsewhere (a pipeline's encoder stages send
        them to the LLM's first stage), by modality; those encoders are not run here.

        Counts and lengths come from host-side lists and, where the batch carries one, host
        -derived positions (``batch.index``), so on a GPU nothing here waits for the device.
        """
        embedding = self.llm.get_input_embeddings()
        # Placeholder positions are overwritten below; masking their ids keeps them in range of
        # any vocabulary, so a tokenizer's placeholder tokens need no LLM embedding rows.
        input_ids = batch.input_ids.masked_fill(batch.kinds > 0, 0)
        embeds = self._embed_tokens(embedding, input_ids)
        unknown = [m for m in batch.modalities if m not in self.encoders and not (features and m in features)]
        if unknown:
            raise ValueError(f"batch has modalities {unknown} but the model's encoders are {list(self.modalities)}")
        rows, seq, hidden = embeds.shape
        flat = embeds.reshape(rows * seq, hidden)
        # Encoders run in the model's fixed order, each on its items or (idle) on a dummy input:
        # under FSDP/TP every rank then issues the same collectives in the same order, whatever
        # mix of modalities its microbatch happens to hold.
        computed: dict[str, torch.Tensor] = {}
        idle = torch.zeros((), dtype=embeds.dtype, device=embeds.device)
        for name, enc in self.encoders.items():
            if features is not None and name in features:
                continue
            inputs = batch.encoder_inputs.get(name)
            if inputs and batch.item_tokens.get(name):
                computed[name] = enc(**inputs)
            elif self.run_idle_encoders:
                idle = idle + 0.0 * enc(**enc.dummy_inputs(embeds.device)).sum().to(embeds.dtype)
        for i, name in enumerate(batch.modalities):
            lengths = batch.item_tokens.get(name, [])
            feats = features[name] if features is not None and name in features else computed.get(name)
            if not lengths or feats is None:
                if self.validate_inputs and bool((batch.kinds == i + 1).any()):
                    raise ValueError(f"batch has {name} placeholder tokens but no {name} encoder inputs")
                continue
            if self.validate_inputs:
                self._check_placeholders(batch, i + 1, name)
            n_items, per_item, width = feats.shape
            if n_items != len(lengths):
                raise ValueError(f"{name} encoder returned {n_items} items, the batch lists {len(lengths)}")
            if width != hidden:
                raise ValueError(f"{name} features have width {width}, the LLM expects {hidden}")
            if max(lengths) > per_item:
                raise ValueError(f"an item of {name} needs {max(lengths)} feature tokens but the encoder yields {per_item}")
            feats = feats.reshape(n_items * per_item, width)
            if min(lengths) < per_item:  # variable-length items (audio): keep each item's first tokens
                # Made on the device from host numbers (one arange per item): no host-to-device
                # copy, which a CUDA graph of the step could not replay (runtime/graph_step.py).
                keep = torch.cat([torch.arange(j * per_item, j * per_item + n, device=feats.device)
                                  for j, n in enumerate(lengths)])
                feats = feats.index_select(0, keep)
            if batch.index is not None:
                positions = batch.index.modality_positions[name]
            else:
                positions = (batch.kinds.reshape(-1) == i + 1).nonzero().squeeze(1)
            flat = flat.index_copy(0, positions, feats.to(flat.dtype))
        embeds = flat.view(rows, seq, hidden)
        return embeds + idle if self.run_idle_encoders else embeds

    def _llm_inputs(self, segments: object) -> dict:
        return attention_inputs(segments, mode=self.mask_mode, backend=self.attention_backend)

    def forward(
        self,
        batch: MultimodalBatch,
        *,
        num_items_in_batch: int | torch.Tensor | None = None,
        return_logits: bool = False,
    ) -> MultimodalOutput:
        """LM loss over text targets (labels ≠ -100 after the shift).

        ``num_items_in_batch``: the number of target tokens over all microbatches (and ranks)
        of the step. With it, the loss is a sum divided by that global count, so gradient
        accumulation and data parallelism weight every token equally.

        With ``loss_impl="fused"`` (default) the LM head runs only on target positions, in
        chunks, and no logits are returned unless ``return_logits`` asks for HF's full path.
        """
        embeds = self.embed(batch)
        attn = self._llm_inputs(batch)
        if self.loss_impl == "hf" or return_logits:
            num_targets = (batch.labels[:, 1:] != IGNORE_INDEX).sum()
            out = self.llm(
                inputs_embeds=embeds, position_ids=batch.position_ids, labels=batch.labels,
                num_items_in_batch=num_items_in_batch, use_cache=False, **attn,
            )
            return MultimodalOutput(loss=out.loss, logits=out.logits, num_target_tokens=num_targets)
        index = batch.index if batch.index is not None else BatchIndex.from_batch(batch)
        pruned = self._target_rows is not None and self.last_block_targets_only and self._target_rows.usable()
        if pruned:
            with self._target_rows.only(index.target_positions, embeds.shape[:2]):
                states = self.decode(embeds, batch, attn)
        else:
            states = self.decode(embeds, batch, attn)
        return self._loss_at(states, index, num_items_in_batch)

    def decode(self, embeds: torch.Tensor, batch: MultimodalBatch, attn: dict | None = None) -> torch.Tensor:
        """The LLM's decoder (its own forward, whatever layers it holds) → hidden states."""
        attn = self._llm_inputs(batch) if attn is None else attn
        return self.llm.get_decoder()(
            inputs_embeds=embeds, position_ids=batch.position_ids, use_cache=False, **attn
        ).last_hidden_state

    def loss_from_states(
        self, states: torch.Tensor, batch: MultimodalBatch, *, num_items_in_batch: int | torch.Tensor | None = None
    ) -> MultimodalOutput:
        """Fused LM head + cross-entropy on the target positions of final hidden states."""
        index = batch.index if batch.index is not None else BatchIndex.from_batch(batch)
        return self._loss_at(states, index, num_items_in_batch)

    def _loss_at(self, states: torch.Tensor, index: BatchIndex, num_items_in_batch) -> MultimodalOutput:
        hidden = states.reshape(-1, states.shape[-1]).index_select(0, index.target_positions)
        count = index.target_positions.shape[0]  # a host int: no sync
        loss = fused_linear_cross_entropy(
            hidden,
            self.llm.get_output_embeddings(),
            index.target_labels,
            denominator=count if num_items_in_batch is None else num_items_in_batch,
            chunk_size=self.loss_chunk_size,
            **self._logit_transform,
        )
        return MultimodalOutput(loss=loss, logits=None, num_target_tokens=torch.tensor(count))

    # -- generation ----------------------------------------------------------------------
    def generate(
        self,
        batch: MultimodalBatch,
        *,
        max_new_tokens: int,
        eos_token_id: int | None = None,
        sampling=None,
        all_done=None,
    ) -> list[list[int]]:
        """New token ids per row (one sample per row, right-padded prompts); see ``models/generation.py``.

        ``sampling``: a ``Sampling`` (temperature, top_p, seed); default greedy. ``all_done``:
        under a sharded runtime, decides the early stop for all ranks together.
        """
        from amylum.models.generation import Sampling, generate

        return generate(
            self, batch, max_new_tokens=max_new_tokens, eos_token_id=eos_token_id,
            sampling=sampling or Sampling(), all_done=all_done,
        )

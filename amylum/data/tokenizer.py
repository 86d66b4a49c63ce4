"""Tokenizers: a small byte-level BPE trained locally for the demo, or any HF tokenizer path.

Every modality placeholder (``<image>``, ``<audio>``, …) must be a single token of the
tokenizer: the processor repeats that token once per feature token, and the model finds the
positions to scatter features into by ``kinds``, not by string matching.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

from transformers import PreTrainedTokenizerFast

PAD, BOS, EOS = "<pad>", "<bos>", "<eos>"
DEFAULT_PLACEHOLDERS = ("<image>", "<audio>")


def build_demo_tokenizer(
    texts: Iterable[str],
    placeholders: Sequence[str] = DEFAULT_PLACEHOLDERS,
    vocab_size: int = 512,
    save_dir: str | Path | None = None,
) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE on ``texts`` (seconds for a few thousand short strings).

    Byte-level means any text is encodable, so held-out questions never hit an unknown token.
    Special tokens get the first ids: ``<pad>``=0, ``<bos>``=1, ``<eos>``=2, then the placeholders.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    specials = [PAD, BOS, EOS, *placeholders]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(list(texts), trainer=trainer)
    hf = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        extra_special_tokens=list(placeholders),
    )
    if save_dir is not None:
        hf.save_pretrained(str(save_dir))
    return hf


def load_tokenizer(path: str | Path) -> PreTrainedTokenizerFast:
    """Load a tokenizer saved with ``save_pretrained`` (ours or any HF model's) from a local path."""
    from transformers import AutoTokenizer

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"tokenizer path {str(path)!r} does not exist")
    return AutoTokenizer.from_pretrained(str(path))


def single_token_id(tokenizer, token: str) -> int | None:
    """The id of ``token`` if the tokenizer has it as one token, else None."""
    tid = tokenizer.convert_tokens_to_ids(token)
    if tid is None:
        return None
    if tokenizer.unk_token_id is not None and tid == tokenizer.unk_token_id and token != tokenizer.unk_token:
        return None  # tokenizers with an unk token map unknown strings to it instead of None
    return int(tid)


def add_placeholder_tokens(tokenizer, placeholders: Sequence[str]) -> int:
    """Add missing placeholders as special tokens to a user's tokenizer; returns how many were added.

    Optional: the processor works without them (see ``MultimodalProcessor``); they make decoded
    sequences readable. Ids beyond the LLM's vocabulary are fine because the model overwrites
    modality positions, but resizing the embeddings to ``len(tokenizer)`` keeps things tidy.
    """
    missing = [p for p in placeholders if single_token_id(tokenizer, p) is None]
    if missing:
        # add_tokens(special_tokens=True) works across transformers versions (the keyword for
        # "extra" special tokens was renamed in v5) and keeps the tokenizer's existing ones.
        tokenizer.add_tokens(missing, special_tokens=True)
    return len(missing)

"""Per-sample work estimated from record metadata, before any sample is loaded.

A sample's work has one part per encoder (modality) and one for the LLM. Both come from a small
linear interface, :class:`WorkCoefficients`, whose numbers are derived from the planner's one cost
model (:func:`coefficients_from_preset`) and optionally corrected by measured timings
(:class:`Corrections`):

- encoder work of modality m = ``encoder_per_item[m] · items + encoder_per_token[m] · tokens``;
  ``items`` are fixed-size encoder inputs (an image tile, a Whisper window padded to 30 s: the
  encoder's own attention length is fixed by its config, so its cost per item is a constant),
  ``tokens`` are the LLM-side tokens the items yield (the projector's work, and any encoder work
  that does scale with clip length);
- LLM work = ``llm_per_token · L + llm_per_mask_entry · E``, with L the sample's LLM tokens (text +
  modality tokens) and E the number of allowed (query, key) pairs of its attention mask.

E follows DESIGN §5: causal, plus bidirectional inside each image / clip. For a sequence of L
tokens whose modality segments have s_1 … s_n tokens that is L(L+1)/2 + Σ s_i(s_i−1)/2, whatever
the segment order (each segment adds its strictly-upper triangle to the causal one). ``causal``
mode (plain causal, what HF LLaVA does) drops the second term.

Units are GPU-seconds on one GPU (tp=1) when the coefficients come from the cost model; any
consistent unit works for balancing. Everything is NumPy; nothing imports torch.

This module gathers the public names; each job lives in its own file:

- :mod:`~amylum.planner.sample_meta`: :class:`SampleMeta` of a record, before loading it;
- :mod:`~amylum.planner.work_model`: :class:`Features`, :class:`WorkCoefficients`,
  :class:`Corrections`, :class:`WorkTable`, :func:`work_table`;
- :mod:`~amylum.planner.work_coefficients`: coefficients from the cost model
  (:func:`coefficients_from_preset`, :func:`coefficients_from_model`);
- :mod:`~amylum.planner.work_stats`: :func:`cv`, :func:`batch_stats`.
"""

from .sample_meta import AudioLength, SampleMeta, default_text_tokens, sample_meta_from_record
from .work_coefficients import coefficients_from_model, coefficients_from_preset
from .work_model import MASK_MODES, Corrections, Features, WorkCoefficients, WorkTable, work_table
from .work_stats import BatchStats, batch_stats, cv

__all__ = [
    "MASK_MODES", "AudioLength", "BatchStats", "Corrections", "Features", "SampleMeta", "WorkCoefficients",
    "WorkTable", "batch_stats", "coefficients_from_model", "coefficients_from_preset", "cv",
    "default_text_tokens", "sample_meta_from_record", "work_table",
]

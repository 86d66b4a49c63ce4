"""Generation for evaluation: the model package's generation, re-exported where tasks use it."""

from amylum.models.generation import Sampling, generate, pick_tokens

__all__ = ["Sampling", "generate", "pick_tokens"]

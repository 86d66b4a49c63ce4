"""amylum: compose, plan and train multimodal LLMs built from HuggingFace models."""

__version__ = "0.1.0"

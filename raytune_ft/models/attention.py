"""Which architectures keep attention inside each sample when rows hold several samples.

Packing (``data.packing``) and padding-free micro-batches (``data.padding_free``) put several samples
in one row with position ids restarting at each. transformers then builds a block-diagonal causal
mask from the position ids (varlen kernels on GPUs do the same), but only in models built on its
shared masking code: Falcon's ALiBi path, for one, lets samples see each other. So the set below
lists the model types whose packed loss was checked equal to the padded one
(tests/unit/test_packing.py re-checks every entry); others are padded.
"""

from __future__ import annotations

from typing import Any

__all__ = ["PACKED_ATTENTION", "keeps_attention_in_sample"]

PACKED_ATTENTION = frozenset({
    "apertus", "cohere", "exaone4", "gemma", "gemma2", "gemma3_text", "gpt_neox", "granite", "llama",
    "mistral", "mixtral", "olmo2", "phi", "phi3", "qwen2", "qwen2_moe", "qwen3", "qwen3_moe", "seed_oss",
    "stablelm", "starcoder2",
})  # fmt: skip


def keeps_attention_in_sample(model: Any) -> bool:
    """Whether ``model`` (a transformers model, possibly wrapped by peft) is of a checked type."""
    return getattr(getattr(model, "config", None), "model_type", None) in PACKED_ATTENTION

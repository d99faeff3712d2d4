"""Tiny random models the tests train, built from configs (nothing is downloaded)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

__all__ = ["save_tiny_llama"]


def save_tiny_llama(folder: Path, tokenizer: Any, **sizes: Any) -> Path:
    """A llama with random weights (seed 0) and ``tokenizer`` saved in ``folder``: 2 layers of width 64 unless
    ``sizes`` (LlamaConfig keys) say otherwise."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    shape = {
        "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
        "num_key_value_heads": 2, "max_position_embeddings": 1024, "tie_word_embeddings": True, **sizes,
    }  # fmt: skip
    config = LlamaConfig(
        vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id, **shape,
    )  # fmt: skip
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder

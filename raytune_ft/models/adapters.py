"""Decide which weights train: a registry from ``adapter.type`` to a function that prepares the model.

Adding DoRA, freeze tuning or QLoRA means adding an entry here; the training loop only ever sees
a model whose ``requires_grad`` flags say what to optimise.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from raytune_ft.config import AdapterConfig, ConfigError

if TYPE_CHECKING:  # torch loads lazily: tokenizer actors import this package and never need it
    import torch

__all__ = ["ADAPTERS", "apply_adapter", "trainable_parameters"]

AdapterFn = Callable[["torch.nn.Module", AdapterConfig], "torch.nn.Module"]


def _lora(model: torch.nn.Module, cfg: AdapterConfig) -> torch.nn.Module:
    from peft import LoraConfig, get_peft_model

    target: Any = "all-linear" if cfg.target == ["all"] else cfg.target
    lora = LoraConfig(
        r=cfg.rank, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout, target_modules=target, task_type="CAUSAL_LM"
    )
    try:
        return get_peft_model(model, lora)  # type: ignore[arg-type]
    except ValueError as err:
        raise ConfigError(f"adapter.target {cfg.target}: {err}") from None


def _full(model: torch.nn.Module, cfg: AdapterConfig) -> torch.nn.Module:
    model.requires_grad_(True)
    return model


ADAPTERS: dict[str, AdapterFn] = {"lora": _lora, "full": _full}


def apply_adapter(model: torch.nn.Module, cfg: AdapterConfig) -> torch.nn.Module:
    """Return the model prepared for ``cfg.type`` training (wrapped by peft for LoRA)."""
    return ADAPTERS[cfg.type](model, cfg)


def trainable_parameters(model: torch.nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return trainable, sum(p.numel() for p in model.parameters())

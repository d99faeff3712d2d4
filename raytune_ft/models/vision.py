"""Vision-language models (what transformers loads as image-text-to-text: Qwen2/2.5/3-VL, LLaVA, LLaVA-NeXT,
Gemma 3): which of their parts train.

Such a model is three parts, found by the module names transformers gives them in every supported family: the
vision tower (``visual``, ``vision_tower``), the projector that maps its features into the language model's
embeddings (``multi_modal_projector``, or Qwen's ``visual.merger`` and ``visual.deepstack_merger_list``), and
the language model (``language_model`` and ``lm_head``). As in LLaMA-Factory, the tower and the projector are
frozen by default (``adapter.freeze_vision_tower``, ``freeze_multi_modal_projector``) and the language model
trains (``freeze_language_model``); LoRA's ``target: all`` takes the linear layers of the parts that train.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

from raytune_ft.config import AdapterConfig, ConfigError

if TYPE_CHECKING:
    import torch

__all__ = ["frozen_parts", "is_vision_language", "lora_targets", "part_of", "train_parts"]

_PROJECTOR = ("multi_modal_projector", "visual.merger", "visual.deepstack_merger_list")
_TOWER = ("visual", "vision_tower")
_LANGUAGE = ("language_model", "lm_head")


def is_vision_language(folder: Path) -> bool:
    """Whether the model in ``folder`` is a vision-language model (its config has a vision part)."""
    config = folder / "config.json"
    return config.is_file() and "vision_config" in json.loads(config.read_text())


def part_of(name: str) -> str | None:
    """``projector``, ``vision_tower`` or ``language_model`` for a module or parameter name of a vision-language
    model (the projector first: Qwen's sits inside the tower), None for anything else."""
    parts = name.removeprefix("model.").split(".")
    for part, prefixes in (("projector", _PROJECTOR), ("vision_tower", _TOWER), ("language_model", _LANGUAGE)):
        if any(parts[: len(p.split("."))] == p.split(".") for p in prefixes):
            return part
    return None


def frozen_parts(cfg: AdapterConfig) -> set[str]:
    """The parts ``cfg`` freezes."""
    flags = {"vision_tower": cfg.freeze_vision_tower, "projector": cfg.freeze_multi_modal_projector,
             "language_model": cfg.freeze_language_model}  # fmt: skip
    return {part for part, frozen in flags.items() if frozen}


def train_parts(model: torch.nn.Module, cfg: AdapterConfig) -> None:
    """Freeze the parts ``cfg`` freezes (the rest keeps its ``requires_grad``); refuse a model left with nothing
    to train."""
    frozen = frozen_parts(cfg)
    for name, parameter in model.named_parameters():
        if part_of(name) in frozen:
            parameter.requires_grad_(False)
    if not any(p.requires_grad for p in model.parameters()):
        raise ConfigError(
            "adapter: freeze_vision_tower, freeze_multi_modal_projector and freeze_language_model leave nothing of "
            "the model to train; unfreeze one"
        )


def lora_targets(model: torch.nn.Module, cfg: AdapterConfig) -> list[str]:
    """LoRA's ``target: all`` in a vision-language model: every linear layer of the parts that train (never
    the LM head)."""
    import torch

    frozen = frozen_parts(cfg)
    names = [
        name for name, module in model.named_modules()
        if isinstance(module, torch.nn.Linear) and part_of(name) not in (None, *frozen) and "lm_head" not in name
    ]  # fmt: skip
    if not names:
        raise ConfigError("adapter.target all: every part of the model with linear layers is frozen; unfreeze one")
    return names

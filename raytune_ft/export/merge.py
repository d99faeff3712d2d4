"""Turn a training checkpoint into one standalone model: LoRA/DoRA merged into its base.

Every export format starts here, so a Hugging Face folder and a GGUF file of the same checkpoint
hold the same weights. The merge runs in float32 and is cast to the export dtype afterwards.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from raytune_ft.config import ExportConfig, InputError, ModelConfig, load_config
from raytune_ft.models import (
    CONFIG_FILE,
    VALUE_HEAD_WEIGHTS,
    checkpoint_step,
    is_adapter_checkpoint,
    latest_checkpoint,
    load_causal_lm,
    load_tokenizer,
    resolve_model_source,
)

__all__ = ["ExportError", "MergedModel", "export_dtype", "merge_checkpoint"]


class ExportError(InputError):
    """An export that cannot be made as asked (destination, format, architecture)."""


@dataclass
class MergedModel:
    model: Any
    """A plain ``transformers`` causal LM: no peft wrapper, no optimizer state."""
    tokenizer: Any
    """The tokenizer and chat template saved with the checkpoint."""
    checkpoint: Path
    """The checkpoint folder it came from."""
    base: str
    """The model source the weights started from."""
    merged_adapter: bool
    """Whether a LoRA/DoRA adapter was merged in (False for a full fine-tune)."""


def merge_checkpoint(path: str | Path, base: str | None = None) -> MergedModel:
    """The newest checkpoint under ``path`` (or ``path`` itself) as one merged model.

    ``base`` overrides the model source an adapter was trained on (its ``model.source`` by default).
    """
    checkpoint = latest_checkpoint(path)
    source = base or load_config(checkpoint / CONFIG_FILE).model.source
    tokenizer = load_tokenizer(checkpoint)
    if not is_adapter_checkpoint(checkpoint):
        model = load_causal_lm(ModelConfig(), checkpoint)
        return MergedModel(model.eval(), tokenizer, checkpoint, source, merged_adapter=False)
    from peft import PeftModel

    model = load_causal_lm(ModelConfig(), resolve_model_source(source))
    merged = PeftModel.from_pretrained(model, checkpoint).merge_and_unload()
    return MergedModel(merged.eval(), tokenizer, checkpoint, source, merged_adapter=True)


def export_dtype(merged: MergedModel, cfg: ExportConfig) -> Any:
    """The torch dtype to write: ``cfg.dtype``, or with ``auto`` the one the base model's config records."""
    import torch

    if cfg.dtype != "auto":
        return getattr(torch, cfg.dtype)
    recorded = _recorded_dtype(merged)
    return getattr(torch, recorded) if recorded in ("float32", "bfloat16", "float16") else torch.float32


def _recorded_dtype(merged: MergedModel) -> str | None:
    folder = merged.checkpoint if not merged.merged_adapter else resolve_model_source(merged.base)
    try:
        config = json.loads((folder / "config.json").read_text())
    except (OSError, ValueError):
        return None
    value = config.get("dtype") or config.get("torch_dtype")
    return str(value) if value else None


def describe(merged: MergedModel) -> dict[str, Any]:
    """Where an export came from, saved beside it (``raytune_ft_export.json``)."""
    return {
        "checkpoint": str(merged.checkpoint),
        "step": checkpoint_step(merged.checkpoint),
        "base": merged.base,
        "merged_adapter": merged.merged_adapter,
        "value_head": (merged.checkpoint / VALUE_HEAD_WEIGHTS).is_file(),
    }

"""Turn a training checkpoint into one standalone model: LoRA/DoRA merged into its base.

Every export format starts here, so a Hugging Face folder and a GGUF file of the same checkpoint
hold the same weights. The merge runs in float32 and is cast to the export dtype afterwards.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from raytune_ft.config import ExportConfig, InputError, JobConfig, load_config
from raytune_ft.models import (
    CONFIG_FILE,
    STATE_FILE,
    VALUE_HEAD_WEIGHTS,
    adapter_folder,
    checkpoint_step,
    inference_model,
    is_adapter_checkpoint,
    latest_checkpoint,
    load_causal_lm,
    load_tokenizer,
    merge_adapters,
    merged_adapters,
    quantized_base,
    resolve_model,
    tokenizer_folder,
)

__all__ = ["ExportError", "MergedModel", "export_dtype", "merge_checkpoint", "merge_init_from"]


class ExportError(InputError):
    """An export that cannot be made as asked (destination, format, architecture)."""


@dataclass
class MergedModel:
    model: Any
    """A plain ``transformers`` causal LM: no peft wrapper, no optimizer state."""
    tokenizer: Any
    """The tokenizer and chat template saved with the checkpoint."""
    checkpoint: Path
    """The checkpoint folder it came from (for ``adapter.init_from`` alone: the last adapter's folder)."""
    base: str
    """The model source the weights started from."""
    merged_adapter: bool
    """Whether a LoRA/DoRA adapter was merged in (False for a full fine-tune)."""
    base_dir: Path | None = None
    """The base model's resolved folder (None for a full fine-tune)."""
    merged: list[str] = field(default_factory=list)
    """``adapter.init_from`` adapters merged into the base before ``checkpoint``'s, in order."""


def merge_checkpoint(path: str | Path, base: str | None = None) -> MergedModel:
    """The newest checkpoint under ``path`` (or ``path`` itself) as one merged model.

    ``base`` overrides the model source an adapter was trained on (its ``model.source`` by default); the
    adapters its ``adapter.init_from`` merged into that base are merged first, as training did.
    """
    checkpoint = latest_checkpoint(path)
    saved = load_config(checkpoint / CONFIG_FILE)
    model = inference_model(saved.model, base)
    tokenizer = load_tokenizer(checkpoint, trust_remote_code=model.trust_remote_code)
    if not is_adapter_checkpoint(checkpoint):
        weights = load_causal_lm(model, checkpoint)
        return MergedModel(weights.eval(), tokenizer, checkpoint, model.source, merged_adapter=False)
    base_dir, merged = resolve_model(model), merged_adapters(saved.adapter)
    _refuse_quantized(base_dir, model.source)
    lm = merge_adapters(load_causal_lm(model, base_dir), [*merged, str(checkpoint)], model.cache_dir)
    return MergedModel(lm.eval(), tokenizer, checkpoint, model.source, True, base_dir, merged)


def merge_init_from(cfg: JobConfig) -> MergedModel:
    """``model.source`` with every ``adapter.init_from`` adapter merged into it, in order: LLaMA-Factory's
    merge YAML (``model_name_or_path`` + ``adapter_name_or_path``) without a training checkpoint.

    The tokenizer is the last adapter's when it carries one (our checkpoints do), else the base model's.
    """
    if not cfg.adapter.init_from:
        raise ExportError("nothing to merge: give a checkpoint (--checkpoint) or adapters in adapter.init_from")
    model = inference_model(cfg.model)
    folders = [adapter_folder(entry, model.cache_dir) for entry in cfg.adapter.init_from]
    base_dir, last = resolve_model(model), folders[-1]
    _refuse_quantized(base_dir, model.source)
    tokenizer = load_tokenizer(
        tokenizer_folder(last, base_dir), require_chat_template=False, trust_remote_code=model.trust_remote_code
    )
    lm = merge_adapters(load_causal_lm(model, base_dir), [str(f) for f in folders], model.cache_dir)
    return MergedModel(lm.eval(), tokenizer, last, model.source, True, base_dir, [str(f) for f in folders[:-1]])


def _refuse_quantized(base_dir: Path, source: str) -> None:
    """Merging LoRA into quantized weights would round the update away (and most formats cannot be re-saved)."""
    method = quantized_base(base_dir)
    if method:
        raise ExportError(
            f"{source} is a quantized model ({method}): an adapter is not merged into quantized weights. Merge "
            "into the full-precision model instead: raytune-ft export --checkpoint RUN --base FULL_PRECISION_MODEL "
            "(or set model.source to it), then quantize the merged model for its runtime (--format gguf)"
        )


def export_dtype(merged: MergedModel, cfg: ExportConfig) -> Any:
    """The torch dtype to write: ``cfg.dtype``, or with ``auto`` the one the base model's config records."""
    import torch

    if cfg.dtype != "auto":
        return getattr(torch, cfg.dtype)
    recorded = _recorded_dtype(merged)
    return getattr(torch, recorded) if recorded in ("float32", "bfloat16", "float16") else torch.float32


def _recorded_dtype(merged: MergedModel) -> str | None:
    folder = merged.base_dir if merged.base_dir is not None else merged.checkpoint
    try:
        config = json.loads((folder / "config.json").read_text())
    except (OSError, ValueError):
        return None
    value = config.get("dtype") or config.get("torch_dtype")
    return str(value) if value else None


def describe(merged: MergedModel) -> dict[str, Any]:
    """Where an export came from, saved beside it (``raytune_ft_export.json``)."""
    trained = (merged.checkpoint / STATE_FILE).is_file()  # not so for a PEFT folder from adapter.init_from
    return {
        "checkpoint": str(merged.checkpoint),
        "step": checkpoint_step(merged.checkpoint) if trained else None,
        "base": merged.base,
        "merged_adapter": merged.merged_adapter,
        "init_from_merged": merged.merged,
        "value_head": (merged.checkpoint / VALUE_HEAD_WEIGHTS).is_file(),
    }

"""Translate a flat LLaMA-Factory training YAML into our sectioned config.

Users arrive with files like ``llama3_lora_sft.yaml``; they run unchanged. Each key either maps to
one of our fields, is accepted but irrelevant here (listed in one warning), or asks for something
we cannot honour yet (an error that lists every such key). Unknown keys fail like ours do.
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Callable
from typing import Any

__all__ = ["LlamaFactoryTranslation", "looks_like_llamafactory", "translate_llamafactory"]

Setter = Callable[[Any], dict[str, Any]]


def _to(key: str, convert: Callable[[Any], Any] = lambda v: v) -> Setter:
    return lambda value: {key: convert(value)}


def _stage(value: Any) -> dict[str, Any]:
    return {"method.stage": value}


def _output_dir(value: Any) -> dict[str, Any]:
    path = os.path.normpath(str(value))
    return {"train.storage_path": os.path.dirname(path) or ".", "train.run_name": os.path.basename(path)}


def _max_steps(value: Any) -> dict[str, Any]:
    return {"train.max_steps": None if value in (None, -1, 0) else value}


def _report_to(value: Any) -> dict[str, Any]:
    """HF's ``report_to`` (a name, a list, ``none`` or ``all``) -> ``tracking.backends``."""
    names = [value] if isinstance(value, str) else list(value or [])
    if "all" in names:
        names = ["wandb", "mlflow", "tensorboard"]
    return {"tracking.backends": [n for n in names if n not in ("none", "")]}


def _template(value: Any) -> dict[str, Any]:
    # LLaMA-Factory always renders with its named template; ours by that name when we have it.
    # Other names are dropped with a warning (see translate_llamafactory): the tokenizer's own is used.
    return {"data.template": value} if value in NAMED_TEMPLATES else {}


def _deepspeed(value: Any) -> dict[str, Any]:
    return {} if value is None else {"scaling.strategy": "deepspeed", "scaling.deepspeed": value}


def _no_checkpointing(value: Any) -> dict[str, Any]:
    return {"model.gradient_checkpointing": not value}


def _precision(dtype: str) -> Setter:
    return lambda value: {"model.dtype": dtype} if value else {}


# LLaMA-Factory key -> what it sets in our config.
_MAPPED: dict[str, Setter] = {
    "model_name_or_path": _to("model.source"),
    "stage": _stage,
    "pref_beta": _to("method.beta", float),
    "pref_ftx": _to("method.ftx", float),
    "pref_loss": _to("method.loss"),  # sigmoid is DPO; kto_pair has no counterpart and is refused by name
    "dpo_label_smoothing": _to("method.label_smoothing", float),
    "simpo_gamma": _to("method.simpo_gamma", float),
    "kto_chosen_weight": _to("method.kto_desirable_weight", float),
    "kto_rejected_weight": _to("method.kto_undesirable_weight", float),
    "finetuning_type": _to("adapter.type"),
    "lora_rank": _to("adapter.rank"),
    "lora_alpha": _to("adapter.alpha"),
    "lora_dropout": _to("adapter.dropout"),
    "lora_target": _to("adapter.target"),
    "use_rslora": _to("adapter.use_rslora"),
    "deepspeed": _deepspeed,
    "quantization_bit": _to("model.quantization_bit"),
    "pissa_init": _to("adapter.pissa_init"),
    "pissa_iter": _to("adapter.pissa_iter"),
    "disable_gradient_checkpointing": _no_checkpointing,
    "use_dora": _to("adapter.use_dora"),
    "freeze_trainable_layers": _to("adapter.freeze_trainable_layers"),
    "freeze_trainable_modules": _to("adapter.freeze_trainable_modules"),
    "freeze_extra_modules": _to("adapter.freeze_extra_modules"),
    "dataset": _to("data.dataset"),
    "dataset_dir": _to("data.dataset_dir"),
    "cutoff_len": _to("data.cutoff_len"),
    "max_samples": _to("data.max_samples"),
    "train_on_prompt": _to("data.train_on_prompt"),
    "mask_history": _to("data.mask_history"),
    "template": _template,
    "packing": _to("data.packing"),
    "neat_packing": _to("data.packing"),
    "mix_strategy": _to("data.mix_strategy"),
    "interleave_probs": _to("data.interleave_probs"),
    "val_size": _to("data.val_size"),
    "eval_dataset": _to("data.eval_dataset"),
    "tokenized_path": _to("data.tokenized_path"),
    "eval_steps": _to("train.eval_steps"),
    "preprocessing_num_workers": _to("data.tokenize_concurrency"),
    "per_device_train_batch_size": _to("train.per_device_batch_size"),
    "gradient_accumulation_steps": _to("train.gradient_accumulation_steps"),
    "learning_rate": _to("train.learning_rate", float),
    "num_train_epochs": _to("train.num_epochs", float),
    "max_steps": _max_steps,
    "lr_scheduler_type": _to("train.lr_scheduler"),
    "warmup_ratio": _to("train.warmup_ratio"),
    "weight_decay": _to("train.weight_decay"),
    "max_grad_norm": _to("train.max_grad_norm"),
    "output_dir": _output_dir,
    "logging_steps": _to("train.logging_steps"),
    "save_steps": _to("train.save_steps"),
    "save_total_limit": _to("train.save_total_limit"),
    "seed": _to("train.seed"),
    "bf16": _precision("bfloat16"),
    "fp16": _precision("float16"),
    "ray_num_workers": _to("scaling.num_workers"),
    "ray_run_name": _to("train.run_name"),
    "ray_storage_path": _to("train.storage_path"),
    "export_dir": _to("export.out_dir"),
    "plot_loss": _to("tracking.plot_loss"),
    "report_to": _report_to,
    "export_size": _to("export.max_shard_size", lambda gb: f"{gb}GB"),
}
# Accepted, but they change nothing here (the reason is shown in the warning).
_IGNORED: dict[str, str] = {
    "do_train": "raytune-ft train always trains",
    "pissa_convert": "checkpoints always store a PiSSA adapter converted to plain LoRA",
    "eval_strategy": "eval_loss is computed every train.eval_steps whenever val_size or eval_dataset is set",
    "streaming": "datasets always stream through Ray Data",
    "overwrite_cache": "data.tokenized_path is reused only when its fingerprint matches, and never overwritten",
    "overwrite_output_dir": "a run with the same name resumes instead of overwriting",
    "trust_remote_code": "only local models load",
    "ddp_timeout": "Ray Train manages the process group",
    "dataloader_num_workers": "Ray Data feeds the workers",
    "save_only_model": "checkpoints always hold what resume needs",
    "flash_attn": "sdpa attention is used",
    "use_fast_tokenizer": "the fast tokenizer is always used",
    "resume_from_checkpoint": "start the same run_name again to resume",
    "logging_dir": "metrics go to the run directory",
    "export_device": "the merge runs on CPU in float32",
    "export_legacy_format": "exports are always safetensors",
}
# Values that are fine because they ask for nothing (LLaMA-Factory defaults or switched off).
_NEUTRAL: dict[str, tuple[Any, ...]] = {
    "do_eval": (False, None),
    "adapter_name_or_path": (None,),
    "warmup_steps": (0, None),
    "export_quantization_bit": (None,),
    "export_hub_model_id": (None,),
    "per_device_eval_batch_size": (),
}
_CANNOT_HONOUR_YET = {
    "do_eval": "evaluation without a validation split (set val_size or eval_dataset)",
    "adapter_name_or_path": "starting from an existing adapter",
    "warmup_steps": "warmup in steps (use warmup_ratio)",
    "export_quantization_bit": "GPTQ export (raytune-ft export --format gguf writes q8_0)",
    "export_hub_model_id": "uploading to the Hugging Face Hub",
}
_EVAL_ONLY = {"per_device_eval_batch_size"}
_NO_EFFECT = {
    "template": "not one of raytune_ft's named templates, so the tokenizer's own chat template is used "
    "(and saved with every checkpoint)",
}
NAMED_TEMPLATES = ("default", "chatml", "llama3", "qwen", "mistral", "gemma", "phi")
"""raytune_ft's named chat templates (``raytune_ft.data.templates``; a test keeps the two in step)."""


class LlamaFactoryTranslation:
    """The translated nested config plus what was ignored, for ``validate --explain``."""

    def __init__(self, config: dict[str, Any], mapped: list[str], ignored: dict[str, str]) -> None:
        self.config = config
        self.mapped = mapped
        self.ignored = ignored


def looks_like_llamafactory(raw: dict[str, Any], sections: set[str]) -> bool:
    """A flat file: none of our section names at the top, and LLaMA-Factory's own keys instead."""
    return not (set(raw) & sections) and bool(set(raw) & (set(_MAPPED) | set(_IGNORED) | set(_NEUTRAL)))


def translate_llamafactory(raw: dict[str, Any], source: str) -> LlamaFactoryTranslation:
    """Nested config for a flat LLaMA-Factory YAML, or ``ConfigError`` listing every key we cannot use."""
    from .loader import ConfigError  # the loader imports this module; avoid the cycle at import time

    flat: dict[str, Any] = {}
    mapped: list[str] = []
    ignored: dict[str, str] = {}
    problems: list[str] = []
    known = [*_MAPPED, *_IGNORED, *_NEUTRAL]
    for key, value in raw.items():
        if key in _MAPPED:
            update = _MAPPED[key](value)
            flat.update(update)
            mapped += [f"{key}: {value!r} -> {k}: {v!r}" for k, v in update.items()]
            if not update and key in _NO_EFFECT:
                ignored[key] = _NO_EFFECT[key]
        elif key in _IGNORED:
            ignored[key] = _IGNORED[key]
        elif key in _EVAL_ONLY or (key in _NEUTRAL and value in _NEUTRAL[key]):
            ignored[key] = "no evaluation or feature it configures is on"
        elif key in _CANNOT_HONOUR_YET:
            problems.append(f"{key}: {value!r} asks for {_CANNOT_HONOUR_YET[key]}, which raytune_ft cannot do yet")
        else:
            close = difflib.get_close_matches(key, known, n=1)
            problems.append(f"unknown LLaMA-Factory key {key!r}" + (f"; did you mean {close[0]!r}?" if close else ""))
    if problems:
        raise ConfigError(f"{source}: LLaMA-Factory config cannot be used as is:\n  - " + "\n  - ".join(problems))
    return LlamaFactoryTranslation(_nest(flat), mapped, ignored)


def _nest(flat: dict[str, Any]) -> dict[str, Any]:
    nested: dict[str, Any] = {}
    for dotted, value in flat.items():
        section, key = dotted.split(".", 1)
        nested.setdefault(section, {})[key] = value
    return nested

"""Translate LLaMA-Factory's flat YAMLs (training, inference, merge and predict files) into our config.

Users arrive with files like ``qwen3_lora_sft.yaml`` and run them unchanged. ``KEYS`` is the one table
of the LLaMA-Factory keys we know: each one maps onto our fields, or is accepted but changes nothing here
(its reason is shown in one warning), or asks for something raytune_ft does not do (an error that lists
every such key with its reason and what to do instead). A key outside the table fails like ours do,
naming the closest key. ``config_kind`` tells which verb a file is for (train, chat, export or eval).
"""

from __future__ import annotations

import difflib
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

__all__ = [
    "KEYS",
    "ConfigKind",
    "LlamaFactoryTranslation",
    "Rule",
    "config_kind",
    "describe",
    "key_table",
    "looks_like_llamafactory",
    "translate_llamafactory",
]

ConfigKind = Literal["train", "chat", "export", "predict"]
Setter = Callable[[Any], dict[str, Any]]


class Refused(ValueError):
    """A mapped key whose value asks for something we cannot do; the message says what instead."""


@dataclass(frozen=True)
class Rule:
    """What one LLaMA-Factory key does in raytune_ft."""

    apply: Setter | None = None
    """Our dotted keys and values it sets (it may raise ``Refused`` for a value it cannot honour)."""
    means: str = ""
    """What ``apply`` sets, in words (the key table of docs/llamafactory.md)."""
    ignored: str = ""
    """Why it is accepted but changes nothing here."""
    refused: str = ""
    """What it asks for that raytune_ft does not do, and what to do instead."""
    inert: tuple[Any, ...] = ()
    """Values of a refused key that ask for nothing (LLaMA-Factory's default, a switched-off feature)."""


def _to(key: str, convert: Callable[[Any], Any] = lambda v: v) -> Rule:
    return Rule(apply=lambda value: {key: convert(value)}, means=key)


def _map(setter: Setter, means: str) -> Rule:
    return Rule(apply=setter, means=means)


def _ignored(reason: str) -> Rule:
    return Rule(ignored=reason)


def _refused(reason: str, *inert: Any) -> Rule:
    return Rule(refused=reason, inert=inert)


def _same(rule: Rule, *keys: str) -> dict[str, Rule]:
    return dict.fromkeys(keys, rule)


def _family(prefix: str, *names: str, switch: str = "") -> dict[str, Rule]:
    """The settings ``PREFIX_NAME`` of a feature that is off unless ``switch`` (default ``use_PREFIX``)."""
    return _same(_ignored(f"only used with {switch or 'use_' + prefix}"), *(f"{prefix}_{name}" for name in names))


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
    unknown = [n for n in names if n not in ("none", "", "wandb", "mlflow", "tensorboard")]
    if unknown:
        raise Refused(f"trackers {unknown}: raytune_ft logs to wandb, mlflow and tensorboard")
    return {"tracking.backends": [n for n in names if n not in ("none", "")]}


def _stage(value: Any) -> dict[str, Any]:
    return {"method.stage": value}


def _reward_model(value: Any) -> dict[str, Any]:
    return {"method.reward": [f"rm:{value}"]} if value else {}


def _reward_model_type(value: Any) -> dict[str, Any]:
    if value == "api":
        raise Refused(
            "a reward server is not supported; train a reward model with stage rm and point reward_model at it, "
            "or write a reward function and name it in method.reward (module:function)"
        )
    return {}  # lora or full: our reward-model checkpoints say themselves whether they hold an adapter


def _finetuning_type(value: Any) -> dict[str, Any]:
    if value == "oft":
        raise Refused("OFT adapters are not available; use lora, freeze or full")
    return {"adapter.type": value}


def _deepspeed(value: Any) -> dict[str, Any]:
    return {} if value is None else {"scaling.strategy": "deepspeed", "scaling.deepspeed": value}


def _fsdp(value: Any) -> dict[str, Any]:
    # HF's fsdp is a string of options ("full_shard auto_wrap") or a list; any of them asks for sharding.
    return {"scaling.strategy": "fsdp2"} if value else {}


def _precision(dtype: str, precision: str) -> Setter:
    return lambda value: {"model.dtype": dtype, "train.precision": precision} if value else {}


def _attention(value: Any) -> dict[str, Any]:
    kernels = {"auto": "auto", "sdpa": "sdpa", "disabled": "eager", "eager": "eager", "fa2": "flash_attention_2",
               "fa3": "flash_attention_3", "flex_attention": "flex_attention"}  # fmt: skip
    if value not in kernels:
        raise Refused(f"use one of {', '.join(kernels)}")
    return {"model.attn_implementation": kernels[value]}


def _quantization_method(value: Any) -> dict[str, Any]:
    methods = {"bnb": "bnb", "bitsandbytes": "bnb", "torchao": "torchao"}
    if value not in methods:
        raise Refused(
            "quantizing while loading uses bnb or torchao; a GPTQ, AWQ, HQQ or EETQ base that is already quantized "
            "loads as it is (point model_name_or_path at it and drop quantization_bit)"
        )
    return {"model.quantization_method": methods[value]}


def _lr_scheduler(value: Any) -> dict[str, Any]:
    names = {"cosine": "cosine", "linear": "linear", "constant": "constant", "constant_with_warmup": "constant"}
    if value not in names:
        raise Refused("use cosine, linear or constant (warmup applies to each)")
    return {"train.lr_scheduler": names[value]}


def _warmup_steps(value: Any) -> dict[str, Any]:
    return {"train.warmup_steps": value} if value else {}  # HF: 0 means "use warmup_ratio"


_OPTIM = {
    "adamw_torch": "adamw",
    "adamw_hf": "adamw",
    "adamw_torch_fused": "adamw_fused",
    "adamw_bnb_8bit": "adamw_8bit",
    "adamw_8bit": "adamw_8bit",
    "paged_adamw_8bit": "paged_adamw_8bit",
    "adafactor": "adafactor",
    "galore_adamw": "galore_adamw",
    "apollo_adamw": "apollo_adamw",
    "sgd": "sgd",
}


def _optim(value: Any) -> dict[str, Any]:
    if value not in _OPTIM:
        raise Refused(f"use one of {', '.join(_OPTIM)} (or use_galore, use_apollo, use_muon)")
    return {"train.optimizer": _OPTIM[value]}


def _switch(optimizer: str) -> Setter:
    """``use_galore`` / ``use_apollo`` / ``use_muon``: checked against ``optim`` in ``_combine``."""
    return lambda value: {f"train.use.{optimizer}": True} if value else {}


_LAYERWISE = (
    "the optimizer steps once after the whole backward pass (layer-wise stepping inside the backward would skip "
    "gradient clipping and DDP's all-reduce); the optimizer state is the same size"
)


def _infer_backend(value: Any) -> dict[str, Any]:
    engines = {"huggingface": "hf", "hf": "hf", "vllm": "vllm"}
    if value not in engines:
        raise Refused("use huggingface or vllm")
    return {"serve.engine": engines[value]}


def _infer_dtype(value: Any) -> dict[str, Any]:
    return {"serve.dtype": value if value in ("float16", "bfloat16", "float32") else "auto"}


def _json_dict(value: Any) -> dict[str, Any]:
    parsed = json.loads(value) if isinstance(value, str) and value.strip().startswith("{") else value
    if not isinstance(parsed, dict):
        raise Refused(f"expected a mapping (or its JSON text), got {value!r}")
    return parsed


def _resources_per_worker(value: Any) -> dict[str, Any]:
    resources = _json_dict(value)
    update: dict[str, Any] = {}
    if "CPU" in resources:
        update["scaling.cpus_per_worker"] = float(resources["CPU"])
    if resources.get("GPU"):
        update["scaling.use_gpu"] = True
    return update


def _resume(value: Any) -> dict[str, Any]:
    if value not in (None, False, True):
        raise Refused(
            "resuming from a given checkpoint path: start the same output_dir again and it resumes from its "
            "newest checkpoint; to start a new run from a checkpoint's weights use adapter_name_or_path"
        )
    return {}


def _do_sample(value: Any) -> dict[str, Any]:
    return {} if value else {"eval.temperature": 0.0}


def _predict_with_generate(value: Any) -> dict[str, Any]:
    return {"eval.tasks": ["generation"] if value else ["loss"]}


def _resize_vocab(value: Any) -> dict[str, Any]:
    if value:
        raise Refused(
            "adding tokens to the model: a chat template's stop token must already be one token of the tokenizer "
            "(a new, untrained embedding row is never generated, so generation would not stop)"
        )
    return {}


_MULTIMODAL = "videos and audio are not read: a dataset with videos is refused"
_TOKEN = (
    "tokens do not belong in a config file (it is saved with every checkpoint): set {} in the environment "
    "(on a cluster: runtime_env env_vars)"
)

KEYS: dict[str, Rule] = {
    # --- model ---------------------------------------------------------------------------------------
    "model_name_or_path": _to("model.source"),
    "model_revision": _to("model.revision"),
    "adapter_name_or_path": _to("adapter.init_from"),
    "adapter_folder": _refused("give the adapter subfolder path in adapter_name_or_path", None),
    "cache_dir": _to("model.cache_dir"),
    "trust_remote_code": _to("model.trust_remote_code", bool),
    "hf_hub_token": _refused(_TOKEN.format("HF_TOKEN"), None),
    "ms_hub_token": _refused(_TOKEN.format("MODELSCOPE_API_TOKEN"), None),
    "om_hub_token": _refused("the Modelers hub is not a model source here", None),
    "use_fast_tokenizer": _ignored("the fast tokenizer is always used"),
    "resize_vocab": _map(_resize_vocab, "false only: a template's stop token must already be one token"),
    "split_special_tokens": _refused("special tokens are always kept whole", False),
    "add_tokens": _refused("adding tokens to the vocabulary is not supported", None),
    "add_special_tokens": _refused("adding tokens to the vocabulary is not supported", None),
    "new_special_tokens_config": _refused("adding tokens to the vocabulary is not supported", None),
    "init_special_tokens": _ignored("no tokens are added, so none are initialised"),
    "low_cpu_mem_usage": _ignored("transformers loads weights lazily"),
    "rope_scaling": _refused("RoPE scaling is not supported; the model's context length applies", None),
    "flash_attn": _map(
        _attention, "model.attn_implementation (auto, sdpa; disabled -> eager; fa2, fa3 -> flash_attention_2, _3)"
    ),
    "shift_attn": _refused("shift short attention (LongLoRA) is not supported", False),
    "mixture_of_depths": _refused("mixture of depths is not supported", None),
    "use_unsloth": _refused("Unsloth is not supported", False),
    "use_unsloth_gc": _refused("Unsloth gradient checkpointing is not supported", False),
    "enable_liger_kernel": _to("model.liger_kernel"),
    "moe_aux_loss_coef": _ignored("MoE models keep their own router loss coefficient"),
    "disable_gradient_checkpointing": _map(
        lambda value: {"model.gradient_checkpointing": not value}, "model.gradient_checkpointing (negated)"
    ),
    "gradient_checkpointing": _to("model.gradient_checkpointing", bool),
    "use_reentrant_gc": _ignored("non-reentrant checkpointing is always used (it also works with frozen inputs)"),
    "upcast_layernorm": _refused("upcasting layer norms is not supported", False),
    "upcast_lmhead_output": _refused("upcasting the LM head output is not supported", False),
    "train_from_scratch": _refused("training from random weights is not supported", False),
    "infer_backend": _map(_infer_backend, "serve.engine (huggingface -> hf, vllm); chat runs on it"),
    "infer_dtype": _map(_infer_dtype, "serve.dtype"),
    "offload_folder": _ignored("weights are not offloaded to disk"),
    "use_kv_cache": _ignored("generation always uses the KV cache"),
    "print_param_status": _ignored("the number of trainable parameters is always printed"),
    "quantization_bit": _to("model.quantization_bit"),
    "quantization_method": _map(
        _quantization_method,
        "model.quantization_method (bnb, bitsandbytes -> bnb; torchao); pre-quantized bases load as they are",
    ),
    "quantization_type": _refused("4-bit bases use NF4", "nf4"),
    "double_quantization": _refused("4-bit bases always use double quantization", True),
    "quantization_device_map": _ignored("each worker loads its quantized base onto its own device (GPU or CPU)"),
    "model_max_length": _ignored("cutoff_len bounds the samples"),
    "block_diag_attn": _ignored("packed samples never attend to each other"),
    "vllm_maxlen": _to("serve.max_model_len"),
    "vllm_gpu_util": _map(
        lambda value: {"serve.engine_kwargs": {"gpu_memory_utilization": value}},
        "serve.engine_kwargs.gpu_memory_utilization",
    ),
    "vllm_enforce_eager": _to("serve.enforce_eager", bool),
    "vllm_max_lora_rank": _to("serve.max_lora_rank"),
    "vllm_config": _map(lambda value: {"serve.engine_kwargs": _json_dict(value)}, "serve.engine_kwargs"),
    "use_kt": _refused("KTransformers is not supported", False),
    # --- multimodal ------------------------------------------------------------------------------------
    **_same(
        _ignored(_MULTIMODAL),
        "video_max_pixels",
        "video_min_pixels",
        "video_fps",
        "video_maxlen",
        "use_audio_in_video",
        "audio_sampling_rate",
    ),
    **_same(_ignored("the model's own processor settings apply"), "image_do_pan_and_scan", "crop_to_patches"),
    "media_dir": _ignored("relative image paths start at dataset_dir (the folder of dataset_info.json)"),
    "image_max_pixels": _to("data.image_max_pixels"),
    "image_min_pixels": _to("data.image_min_pixels"),
    "freeze_vision_tower": _to("adapter.freeze_vision_tower", bool),
    "freeze_multi_modal_projector": _to("adapter.freeze_multi_modal_projector", bool),
    "freeze_language_model": _to("adapter.freeze_language_model", bool),
    # --- export (merge YAMLs) ----------------------------------------------------------------------------
    "export_dir": _to("export.out_dir"),
    "export_size": _to("export.max_shard_size", lambda gb: f"{gb}GB"),
    "export_device": _ignored("the merge runs on CPU in float32"),
    "export_legacy_format": _refused("exports are always safetensors", False),
    "export_quantization_bit": _refused("GPTQ export: raytune-ft export --format gguf writes q8_0", None),
    "export_quantization_dataset": _ignored("only used by GPTQ export"),
    "export_quantization_nsamples": _ignored("only used by GPTQ export"),
    "export_quantization_maxlen": _ignored("only used by GPTQ export"),
    "export_hub_model_id": _refused(
        "uploading to the Hugging Face Hub: upload the export folder with `hf upload`", None
    ),
    # --- data ------------------------------------------------------------------------------------------
    "template": _to("data.template"),
    "dataset": _to("data.dataset"),
    "eval_dataset": _to("data.eval_dataset"),
    "dataset_dir": _to("data.dataset_dir"),
    "cutoff_len": _to("data.cutoff_len"),
    "train_on_prompt": _to("data.train_on_prompt"),
    "mask_history": _to("data.mask_history"),
    "max_samples": _to("data.max_samples"),
    "val_size": _to("data.val_size"),
    "mix_strategy": _to("data.mix_strategy"),
    "interleave_probs": _to("data.interleave_probs"),
    "tokenized_path": _to("data.tokenized_path"),
    "packing": _to("data.packing"),
    "neat_packing": _to("data.packing"),
    "buffer_size": _to("data.shuffle_buffer_size"),
    "preprocessing_num_workers": _to("data.tokenize_concurrency"),
    "disable_shuffling": _map(lambda value: {"data.shuffle": not value}, "data.shuffle (negated)"),
    "tool_format": _to("data.tool_format"),
    "default_system": _to("data.default_system"),
    "enable_thinking": _to("data.enable_thinking"),
    "preserve_thinking": _to("data.preserve_thinking"),
    "streaming": _ignored("datasets always stream through Ray Data"),
    "overwrite_cache": _ignored("data.tokenized_path is reused only when its fingerprint matches, never overwritten"),
    "preprocessing_batch_size": _ignored("Ray Data tokenizes blocks of 256 rows"),
    "ignore_pad_token_for_loss": _ignored("padding never counts in the loss"),
    "eval_num_beams": _refused("beam search is not supported", None, 1),
    "eval_on_each_dataset": _refused("one eval_loss over all eval datasets is reported", False),
    "data_shared_file_system": _ignored("Ray Data reads the files on each node; nothing is cached on a shared disk"),
    # --- method ----------------------------------------------------------------------------------------
    "stage": _map(_stage, "method.stage (pt, sft, rm, dpo, kto)"),
    "finetuning_type": _map(_finetuning_type, "adapter.type (lora, freeze, full)"),
    "lora_rank": _to("adapter.rank"),
    "lora_alpha": _to("adapter.alpha"),
    "lora_dropout": _to("adapter.dropout"),
    "lora_target": _to("adapter.target"),
    "use_rslora": _to("adapter.use_rslora"),
    "use_dora": _to("adapter.use_dora"),
    "pissa_init": _to("adapter.pissa_init"),
    "pissa_iter": _to("adapter.pissa_iter"),
    "pissa_convert": _ignored("checkpoints always store a PiSSA adapter converted to plain LoRA"),
    "freeze_trainable_layers": _to("adapter.freeze_trainable_layers"),
    "freeze_trainable_modules": _to("adapter.freeze_trainable_modules"),
    "freeze_extra_modules": _to("adapter.freeze_extra_modules"),
    "additional_target": _refused("training extra full modules beside LoRA is not supported", None),
    "create_new_adapter": _to("adapter.new_adapter", bool),
    "loraplus_lr_ratio": _to("train.loraplus_lr_ratio"),
    "loraplus_lr_embedding": _to("train.loraplus_lr_embedding", float),
    "module_dropout": _ignored("only used by OFT"),
    "oft_rank": _ignored("only used by OFT"),
    "oft_block_size": _ignored("only used by OFT"),
    "oft_target": _ignored("only used by OFT"),
    "pref_beta": _to("method.beta", float),
    "pref_ftx": _to("method.ftx", float),
    "pref_loss": _to("method.loss"),
    "pref_bco_weight": _refused("BCO is not supported", 0, 0.0),
    "dpo_label_smoothing": _to("method.label_smoothing", float),
    "simpo_gamma": _to("method.simpo_gamma", float),
    "kto_chosen_weight": _to("method.kto_desirable_weight", float),
    "kto_rejected_weight": _to("method.kto_undesirable_weight", float),
    "ld_alpha": _refused("LD-DPO is not supported", None),
    "ref_model": _refused("the reference is the base model (method.reference)", None),
    "ref_model_adapters": _refused("the reference is the base model (method.reference)", None),
    "ref_model_quantization_bit": _refused("the reference is the base model (method.reference)", None),
    "reward_model": _map(
        _reward_model, "method.reward: rm:<reward_model> (a reward model of stage rm, ours or LLaMA-Factory's)"
    ),
    "reward_model_adapters": _refused(
        "a reward model is one checkpoint of stage rm, its adapter included: point reward_model at it", None
    ),
    "reward_model_quantization_bit": _refused("quantized reward models are not supported", None),
    "reward_model_type": _map(_reward_model_type, "lora or full: read from the checkpoint itself; api: refused"),
    "ppo_buffer_size": _to("method.ppo_buffer_size"),
    "ppo_epochs": _to("method.ppo_epochs"),
    "ppo_score_norm": _to("method.ppo_score_norm"),
    "ppo_target": _to("method.ppo_target", float),
    "ppo_whiten_rewards": _to("method.ppo_whiten_rewards"),
    "use_galore": _map(_switch("galore_adamw"), "train.optimizer: galore_adamw"),
    "use_apollo": _map(_switch("apollo_adamw"), "train.optimizer: apollo_adamw"),
    "use_muon": _map(_switch("muon"), "train.optimizer: muon"),
    "use_badam": _refused(
        "BAdam (training one block of layers at a time) is not supported: use finetuning_type freeze, or "
        "optim adamw_8bit / use_galore to save optimizer memory",
        False,
    ),
    "use_adam_mini": _refused(
        "Adam-mini is not supported: use optim adamw_8bit (8-bit moments) or use_apollo to save optimizer memory",
        False,
    ),
    "use_llama_pro": _refused("LLaMA Pro block expansion is not supported", False),
    **{
        f"galore_{name}": _to(f"train.galore.{name}")
        for name in ("target", "rank", "update_interval", "scale", "proj_type")
    },
    "galore_layerwise": _ignored(_LAYERWISE),
    **{
        f"apollo_{name}": _to(f"train.apollo.{name}")
        for name in ("target", "rank", "update_interval", "scale", "proj", "proj_type", "scale_type", "scale_front")
    },
    "apollo_layerwise": _ignored(_LAYERWISE),
    **_family("badam", "mode", "start_block", "switch_mode", "switch_interval", "update_ratio", "mask_mode", "verbose"),
    "use_mca": _refused("Megatron-Core training is not supported", False),
    "use_hyper_parallel": _refused("hyper-parallel training is not supported", False),
    "hyper_parallel_args": _ignored("only used with use_hyper_parallel"),
    "use_dft_loss": _refused("the DFT loss is not supported", False),
    "use_asft_loss": _refused("the ASFT loss is not supported", False),
    "asft_alpha": _ignored("only used with use_asft_loss"),
    "use_eaft_loss": _refused("the EAFT loss is not supported", False),
    "eaft_alpha": _ignored("only used with use_eaft_loss"),
    "compute_accuracy": _refused("token accuracy is not reported", False),
    "early_stopping_steps": _refused("early stopping: sweep with raytune-ft tune (ASHA stops weak trials)", None),
    "plot_loss": _to("tracking.plot_loss"),
    "include_effective_tokens_per_second": _ignored("tokens/s is always reported"),
    "include_num_input_tokens_seen": _ignored("token counts are always reported"),
    "use_swanlab": _refused("SwanLab is not a tracker here: use report_to wandb, mlflow or tensorboard", False),
    **_family(
        "swanlab", "project", "workspace", "run_name", "mode", "api_key", "logdir", "lark_webhook_url", "lark_secret"
    ),
    # --- training (Hugging Face Trainer arguments) ---------------------------------------------------------
    "do_train": _ignored("raytune-ft train always trains"),
    "do_eval": _to("train.do_eval", bool),
    "do_predict": _ignored("prediction runs with raytune-ft eval"),
    "predict_with_generate": _map(_predict_with_generate, "eval.tasks: [generation] (else [loss])"),
    "output_dir": _map(
        _output_dir, "train.storage_path + train.run_name (its parent and name); eval.output_dir in a predict file"
    ),
    "overwrite_output_dir": _ignored("a run with the same output_dir resumes instead of overwriting"),
    "per_device_train_batch_size": _to("train.per_device_batch_size"),
    "per_device_eval_batch_size": _to("eval.batch_size"),
    "gradient_accumulation_steps": _to("train.gradient_accumulation_steps"),
    "learning_rate": _to("train.learning_rate", float),
    "weight_decay": _to("train.weight_decay", float),
    "max_grad_norm": _to("train.max_grad_norm"),
    "num_train_epochs": _to("train.num_epochs", float),
    "max_steps": _map(_max_steps, "train.max_steps (-1: use num_train_epochs)"),
    "lr_scheduler_type": _map(_lr_scheduler, "train.lr_scheduler (cosine, linear, constant, constant_with_warmup)"),
    "warmup_ratio": _to("train.warmup_ratio"),
    "warmup_steps": _map(_warmup_steps, "train.warmup_steps (wins over warmup_ratio; 0: use warmup_ratio)"),
    "logging_steps": _to("train.logging_steps"),
    "save_steps": _to("train.save_steps"),
    "save_total_limit": _to("train.save_total_limit"),
    "eval_steps": _to("train.eval_steps"),
    "seed": _to("train.seed"),
    "bf16": _map(
        _precision("bfloat16", "bf16"),
        "model.dtype: bfloat16, train.precision: bf16 (autocast; trainable weights and optimizer state float32)",
    ),
    "fp16": _map(_precision("float16", "fp16"), "model.dtype: float16, train.precision: fp16 (GPU only)"),
    "pure_bf16": _map(
        lambda value: {"train.use.pure_bf16": True} if value else {},
        "model.dtype: bfloat16, train.precision: pure_bf16 (wins over bf16)",
    ),
    "tf32": _ignored("TF32 matmuls are a GPU setting torch chooses"),
    "optim": _map(
        _optim,
        "train.optimizer (adamw_torch -> adamw, adamw_torch_fused -> adamw_fused, adamw_bnb_8bit -> "
        "adamw_8bit, paged_adamw_8bit, adafactor, galore_adamw, apollo_adamw, sgd)",
    ),
    "adam_beta1": _to("train.adam_beta1", float),
    "adam_beta2": _to("train.adam_beta2", float),
    "adam_epsilon": _to("train.adam_epsilon", float),
    "eval_strategy": _ignored("eval_loss is computed every eval_steps whenever val_size or eval_dataset is set"),
    "evaluation_strategy": _ignored("eval_loss is computed every eval_steps whenever val_size or eval_dataset is set"),
    "save_strategy": _refused("checkpoints are written every save_steps", "steps"),
    "logging_strategy": _refused("metrics are logged every logging_steps", "steps"),
    "logging_dir": _ignored("metrics go to the run directory"),
    "report_to": _map(_report_to, "tracking.backends (wandb, mlflow, tensorboard; all; none)"),
    "run_name": _ignored("runs and trackers are named after output_dir"),
    "deepspeed": _map(_deepspeed, "scaling.strategy: deepspeed + scaling.deepspeed (the JSON file, or a ZeRO stage)"),
    "fsdp": _map(_fsdp, "scaling.strategy: fsdp2"),
    "fsdp_config": _ignored("FSDP2 shards every decoder layer and the root"),
    "ddp_timeout": _to("scaling.collective_timeout_s", int),
    "ddp_backend": _ignored("Ray Train picks gloo on CPU and NCCL on GPU"),
    "ddp_find_unused_parameters": _ignored("DDP is configured by the strategy"),
    "local_rank": _ignored("Ray Train assigns ranks"),
    "dataloader_num_workers": _ignored("Ray Data feeds the workers"),
    "dataloader_pin_memory": _ignored("Ray Data feeds the workers"),
    "dataloader_persistent_workers": _ignored("Ray Data feeds the workers"),
    "save_only_model": _ignored(
        "checkpoints always hold the optimizer and data position too, so every run can resume exactly"
    ),
    "save_safetensors": _ignored("weights are always saved as safetensors"),
    "resume_from_checkpoint": _map(
        _resume, "null/true only: a run resumes from its newest checkpoint when started again"
    ),
    "remove_unused_columns": _ignored("rows carry only the columns training needs"),
    "label_names": _ignored("labels come from the data pipeline"),
    "push_to_hub": _refused("uploading to the Hugging Face Hub: raytune-ft export, then `hf upload`", False),
    "hub_model_id": _ignored("only used with push_to_hub"),
    "gradient_checkpointing_kwargs": _ignored("non-reentrant checkpointing is always used"),
    "fp8": _refused("FP8 training is not available yet", False),
    "fp8_backend": _ignored("only used with fp8"),
    "fp8_enable_fsdp_float8_all_gather": _ignored("only used with fp8"),
    "enable_torch_profiler": _refused("the torch profiler is not wired in; profile the step core without Ray", False),
    **_family(
        "profiler",
        "output_dir",
        "wait_steps",
        "warmup_steps",
        "active_steps",
        "repeat",
        "record_shapes",
        "profile_memory",
        "with_stack",
        switch="enable_torch_profiler",
    ),
    "profile_modules": _ignored("only used with enable_torch_profiler"),
    # --- generation (chat and predict) ------------------------------------------------------------------
    "max_new_tokens": _to("eval.max_new_tokens"),
    "temperature": _to("eval.temperature", float),
    "do_sample": _map(_do_sample, "false: eval.temperature 0 (greedy)"),
    "top_p": _map(
        lambda value: {"rollout.use.top_p": value}, "rollout.top_p for ppo (chat and eval sample with temperature only)"
    ),
    "top_k": _ignored("sampling draws with temperature only"),
    "num_beams": _refused("beam search is not supported", 1),
    "repetition_penalty": _refused("a repetition penalty is not supported", 1.0, 1),
    "length_penalty": _ignored("only used by beam search"),
    "max_length": _ignored("max_new_tokens bounds the answers"),
    "skip_special_tokens": _ignored("special tokens are never printed"),
    # --- Ray -------------------------------------------------------------------------------------------
    "ray_num_workers": _to("scaling.num_workers"),
    "ray_run_name": _to("train.run_name"),
    "ray_storage_path": _to("train.storage_path"),
    "ray_storage_filesystem": _to("train.storage_filesystem"),
    "ray_init_kwargs": _map(lambda value: {"scaling.ray_init": _json_dict(value)}, "scaling.ray_init"),
    "resources_per_worker": _map(_resources_per_worker, "scaling.cpus_per_worker (CPU), scaling.use_gpu (GPU)"),
    "placement_strategy": _to("scaling.placement_strategy"),
    "master_addr": _ignored("Ray Train sets up the process group"),
    "master_port": _ignored("Ray Train sets up the process group"),
    # --- llamafactory-cli eval (MMLU, C-Eval, CMMLU) -----------------------------------------------------
    **_same(
        _refused("benchmark suites: raytune-ft eval with eval.tasks: choice on an MMLU-style file", None),
        "task",
        "task_dir",
        "lang",
        "n_shot",
        "save_dir",
        "download_mode",
    ),
}
"""Every LLaMA-Factory key raytune_ft knows, and what it does here."""

# A predict YAML (do_predict) describes an evaluation: these keys address the eval section there.
_PREDICT_KEYS: dict[str, Setter] = {
    "output_dir": lambda value: {"eval.output_dir": value},
    "eval_dataset": lambda value: {"eval.dataset": value},
    # LLaMA-Factory caps each dataset file and then predicts on every row left.
    "max_samples": lambda value: {"data.max_samples": value, "eval.max_samples": None},
}
_FILESYSTEMS = {"s3": "s3", "gs": "gs", "gcs": "gs"}


class LlamaFactoryTranslation:
    """The translated nested config, what was mapped and ignored (for ``validate --explain``), and which
    verb the file is for."""

    def __init__(self, config: dict[str, Any], mapped: list[str], ignored: dict[str, str], kind: ConfigKind) -> None:
        self.config = config
        self.mapped = mapped
        self.ignored = ignored
        self.kind = kind


def describe(rule: Rule) -> str:
    """One line on what a key does here: the keys it sets, or why it is ignored or refused."""
    if rule.apply is not None:
        return f"-> {rule.means}"
    if rule.ignored:
        return f"accepted, no effect: {rule.ignored}"
    shown = ", ".join(repr(value) for value in rule.inert)
    return f"refused{f' unless {shown}' if shown else ''}: {rule.refused}"


def key_table() -> str:
    """The Markdown table of every key in ``KEYS`` and what it does (kept in docs/llamafactory.md)."""
    rows = [f"| `{key}` | {describe(rule).replace('|', '/')} |" for key, rule in KEYS.items()]
    return "\n".join(["| LLaMA-Factory key | in raytune_ft |", "|---|---|", *rows])


def looks_like_llamafactory(raw: dict[str, Any], sections: set[str]) -> bool:
    """A flat file: none of our section names at the top, and LLaMA-Factory's own keys instead."""
    return not (set(raw) & sections) and bool(set(raw) & set(KEYS))


def config_kind(raw: dict[str, Any]) -> ConfigKind:
    """Which verb a flat file is for: a merge file (``export_dir``) exports, a predict file (``do_predict``
    without ``do_train``) evaluates, a file naming no data or stage (LLaMA-Factory's inference YAMLs) chats."""
    if raw.get("export_dir"):
        return "export"
    if raw.get("do_predict") and not raw.get("do_train"):
        return "predict"
    if not ({"stage", "dataset", "do_train"} & set(raw)):
        return "chat"
    return "train"


def translate_llamafactory(raw: dict[str, Any], source: str) -> LlamaFactoryTranslation:
    """Nested config for a flat LLaMA-Factory YAML, or ``ConfigError`` listing every key we cannot use."""
    from .loader import ConfigError  # the loader imports this module; avoid the cycle at import time

    kind = config_kind(raw)
    flat: dict[str, Any] = {}
    mapped: list[str] = []
    ignored: dict[str, str] = {}
    problems: list[str] = []
    for key, value in raw.items():
        rule = KEYS.get(key)
        if rule is None:
            problems.append(_unknown(key))
            continue
        setter = _PREDICT_KEYS.get(key) if kind == "predict" else None
        setter = setter or rule.apply
        if setter is not None:
            try:
                update = setter(value)
            except Refused as err:
                problems.append(f"{key}: {value!r}: {err}")
                continue
            flat.update(update)
            if any(".use." in k for k in update):  # an internal switch, resolved in _combine: say what it means
                mapped.append(f"{key}: {value!r} -> {rule.means}")
            else:
                mapped += [f"{key}: {value!r} -> {k}: {v!r}" for k, v in update.items()]
        elif rule.ignored:
            ignored[key] = rule.ignored
        elif value in rule.inert:
            ignored[key] = "switched off, as here"
        else:
            problems.append(f"{key}: {value!r}: {rule.refused}")
    if kind == "train" and raw.get("do_predict"):
        problems.append("do_predict: True: predict after training with raytune-ft eval CONFIG --checkpoint OUTPUT_DIR")
    _combine(flat, problems)
    if problems:
        raise ConfigError(f"{source}: LLaMA-Factory config cannot be used as is:\n  - " + "\n  - ".join(problems))
    return LlamaFactoryTranslation(_nest(flat), mapped, ignored, kind)


def _combine(flat: dict[str, Any], problems: list[str]) -> None:
    """Keys that only mean something together: ``do_eval`` needs a validation split, ``mask_history`` and
    ``train_on_prompt`` exclude each other (as in LLaMA-Factory), ``model_revision``
    joins ``model.source`` as ``@REV``, ``ray_storage_filesystem`` turns ``storage_path`` into a URI."""
    if flat.pop("train.do_eval", False) and not (flat.get("data.val_size") or flat.get("data.eval_dataset")):
        problems.append("do_eval: True asks for evaluation without a validation split: set val_size or eval_dataset")
    if flat.get("data.mask_history") and flat.get("data.train_on_prompt"):
        problems.append("mask_history: True with train_on_prompt: True: LLaMA-Factory refuses the pair; choose one")
    revision = flat.pop("model.revision", None)
    source = str(flat.get("model.source", ""))
    local = source.startswith("builtin:") or os.path.exists(os.path.expanduser(source))
    if revision and local and revision != "main":  # main is LLaMA-Factory's default: it asks for nothing
        problems.append(f"model_revision: {revision!r}: model_name_or_path {source!r} is not a Hub id")
    elif revision and not local:
        if "@" in source:
            problems.append(f"model_revision: {revision!r}: model_name_or_path {source!r} already names a revision")
        else:
            flat["model.source"] = f"{source}@{revision}"
    _combine_optimizer(flat, problems)
    _combine_online(flat)
    if flat.pop("train.use.pure_bf16", False):  # LLaMA-Factory turns mixed precision off under pure_bf16
        flat.update({"model.dtype": "bfloat16", "train.precision": "pure_bf16"})
    filesystem = flat.pop("train.storage_filesystem", None)
    if filesystem:
        scheme = _FILESYSTEMS.get(str(filesystem).lower())
        if scheme is None:
            problems.append(f"ray_storage_filesystem: {filesystem!r}: use s3 or gs (or a URI in ray_storage_path)")
        else:
            path = str(flat.get("train.storage_path", "")).split("://", 1)[-1].lstrip("/")
            flat["train.storage_path"] = f"{scheme}://{path}"


def _combine_online(flat: dict[str, Any]) -> None:
    """PPO generates with the generation keys (``max_new_tokens``, ``temperature``, ``top_p``), and one
    generated batch holds what LLaMA-Factory collects per PPO step on one device: per_device_train_batch_size
    x gradient_accumulation_steps x ppo_buffer_size prompts (``rollout.prompts_per_step``; raise it with
    more workers). Gradient accumulation is then implicit: each step learns from its whole mini-batch."""
    top_p = flat.pop("rollout.use.top_p", None)
    if flat.get("method.stage") != "ppo":
        return
    for ours, theirs in (("method.max_new_tokens", "eval.max_new_tokens"), ("method.temperature", "eval.temperature")):
        if flat.get(theirs):
            flat[ours] = flat[theirs]
    if top_p is not None:
        flat["rollout.top_p"] = top_p
    batch = int(flat.get("train.per_device_batch_size", 8))  # Hugging Face's default
    steps = int(flat.pop("train.gradient_accumulation_steps", 1))
    flat["rollout.prompts_per_step"] = batch * steps * int(flat.get("method.ppo_buffer_size", 1))


def _unknown(key: str) -> str:
    if key in _trainer_arguments():
        return f"{key}: a Hugging Face Trainer argument raytune_ft has no counterpart for; remove it"
    close = difflib.get_close_matches(key, list(KEYS), n=1)
    return f"unknown LLaMA-Factory key {key!r}" + (f"; did you mean {close[0]!r}?" if close else "")


def _trainer_arguments() -> set[str]:
    """Field names of Hugging Face's TrainingArguments (imported only when a key is unknown)."""
    import dataclasses

    try:
        from transformers import Seq2SeqTrainingArguments
    except ImportError:  # pragma: no cover - transformers is a dependency
        return set()
    return {field.name for field in dataclasses.fields(Seq2SeqTrainingArguments)}


def _combine_optimizer(flat: dict[str, Any], problems: list[str]) -> None:
    """``use_galore`` / ``use_apollo`` / ``use_muon`` choose the optimizer; LLaMA-Factory runs GaLore and APOLLO
    with ``optim``'s AdamW, and one of them at a time."""
    switches = [name for name in ("galore_adamw", "apollo_adamw", "muon") if flat.pop(f"train.use.{name}", False)]
    if len(switches) > 1:
        problems.append(f"use_galore, use_apollo and use_muon exclude each other; this file turns on {switches}")
    elif switches:
        given = flat.get("train.optimizer", "adamw")
        if given != "adamw" and given != switches[0]:
            problems.append(f"use_{switches[0].split('_')[0]}: True runs with optim adamw_torch, not {given!r} here")
        flat["train.optimizer"] = switches[0]


def _nest(flat: dict[str, Any]) -> dict[str, Any]:
    nested: dict[str, Any] = {}
    for dotted, value in flat.items():
        *sections, key = dotted.split(".")
        place = nested
        for section in sections:
            place = place.setdefault(section, {})
        place[key] = value
    return nested

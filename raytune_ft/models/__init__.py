"""Model stage: resolve a model source to a local folder, load it, and prepare the weights to train
(LoRA or full). Also the checkpoint layout that inference reads back."""

from .adapters import ADAPTERS, apply_adapter, trainable_parameters
from .attention import PACKED_ATTENTION, keeps_attention_in_sample
from .checkpoint import (
    ADAPTER_CONFIG,
    ADAPTER_WEIGHTS,
    CONFIG_FILE,
    OPTIMIZER_FILE,
    STATE_FILE,
    VLLM_LORA_RANKS,
    CheckpointError,
    adapter_rank,
    checkpoint_step,
    is_adapter_checkpoint,
    latest_checkpoint,
    vllm_lora_rank,
)
from .hub import HubModel, hub_model
from .init_from import adapter_folder, merge_adapters, merged_adapters, pin_init_from, pin_sources
from .loading import (
    inference_model,
    load_base,
    load_causal_lm,
    load_for_inference,
    load_row_tokenizer,
    load_tokenizer,
    quantized_base,
    tokenizer_folder,
    trained_base,
)
from .pissa import INITIAL_ADAPTER as PISSA_INITIAL_ADAPTER
from .pissa import restore_from_plain_lora, save_weights
from .source import BUILTIN_MODELS, ModelSourceError, cache_root, pin_model_source, resolve_model, resolve_model_source
from .value_head import (
    CRITIC_WEIGHTS,
    VALUE_HEAD_WEIGHTS,
    RewardScorer,
    attach_head,
    reward_model_checkpoint,
    value_head_model,
)

__all__ = [
    "ADAPTERS",
    "ADAPTER_CONFIG",
    "ADAPTER_WEIGHTS",
    "BUILTIN_MODELS",
    "CONFIG_FILE",
    "CRITIC_WEIGHTS",
    "OPTIMIZER_FILE",
    "PACKED_ATTENTION",
    "PISSA_INITIAL_ADAPTER",
    "STATE_FILE",
    "VALUE_HEAD_WEIGHTS",
    "VLLM_LORA_RANKS",
    "CheckpointError",
    "HubModel",
    "ModelSourceError",
    "RewardScorer",
    "adapter_folder",
    "adapter_rank",
    "apply_adapter",
    "attach_head",
    "cache_root",
    "checkpoint_step",
    "hub_model",
    "inference_model",
    "is_adapter_checkpoint",
    "keeps_attention_in_sample",
    "latest_checkpoint",
    "load_base",
    "load_causal_lm",
    "load_for_inference",
    "load_row_tokenizer",
    "load_tokenizer",
    "merge_adapters",
    "merged_adapters",
    "pin_init_from",
    "pin_model_source",
    "pin_sources",
    "quantized_base",
    "resolve_model",
    "resolve_model_source",
    "restore_from_plain_lora",
    "reward_model_checkpoint",
    "save_weights",
    "tokenizer_folder",
    "trainable_parameters",
    "trained_base",
    "value_head_model",
    "vllm_lora_rank",
]

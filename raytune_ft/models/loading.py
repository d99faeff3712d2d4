"""Load tokenizers and causal LMs from resolved sources and from our checkpoints.

Training and inference both come through here, so the tokenizer (and its chat template) saved
in a checkpoint is the one every reader uses: training and chat cannot drift apart.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from raytune_ft.config import AdapterConfig, JobConfig, ModelConfig, load_config

from .attention import PACKED_SDPA, transformers_attention
from .checkpoint import CONFIG_FILE, CheckpointError, latest_checkpoint
from .init_from import adapter_folder, merge_adapters, merged_adapters
from .source import ModelSourceError, pin_model_source, resolve_model
from .vision import is_vision_language

if TYPE_CHECKING:  # torch loads lazily: tokenizer actors import this package and never need it
    import torch

__all__ = [
    "inference_model",
    "load_base",
    "load_causal_lm",
    "load_for_inference",
    "load_row_tokenizer",
    "load_tokenizer",
    "row_tokenizer_from_folder",
    "tokenizer_folder",
    "trained_base",
]


def load_tokenizer(path: Path, require_chat_template: bool = True, trust_remote_code: bool = False) -> Any:
    """Tokenizer with a pad token (the EOS token when the model defines none).

    Training may load a base model's tokenizer without a chat template and give it a named one
    (``data.template``); everything else needs the template the model was trained with.
    """
    tokenizer = _from_pretrained(path, trust_remote_code)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    if require_chat_template and not getattr(tokenizer, "chat_template", None):
        raise ModelSourceError(
            f"{path}: the tokenizer has no chat template. To train this base model, set data.template "
            "(e.g. default or chatml); its checkpoints then carry the template."
        )
    return tokenizer


def load_row_tokenizer(source: str | ModelConfig, adapter: str | None = None) -> Any:
    """What the data workers tokenize with: a ``RowTokenizer`` (no transformers import; the same token
    rows) when the model folder allows it, else its transformers tokenizer as it ships (no template check).
    ``source``: a model source, or a ``model`` section (its cache and ``trust_remote_code`` then apply),
    resolved on the node this runs on. ``adapter``: an adapter (folder or pinned Hub id) whose own tokenizer,
    when it has one, is used instead (``tokenizer_folder``)."""
    model = source if isinstance(source, ModelConfig) else ModelConfig(source=source)
    folder = adapter_folder(adapter, model.cache_dir, key="adapter") if adapter is not None else None
    return row_tokenizer_from_folder(tokenizer_folder(folder, model), model.trust_remote_code)


def row_tokenizer_from_folder(path: Path, trust_remote_code: bool = False) -> Any:
    """``load_row_tokenizer`` for a folder that holds a tokenizer but no model (an adapter checkpoint)."""
    from .fast_tokenizer import RowTokenizer

    fast = None if trust_remote_code else RowTokenizer.from_folder(path)  # the model's own code may tokenize
    return fast or load_tokenizer(path, require_chat_template=False, trust_remote_code=trust_remote_code)


def _from_pretrained(path: Path, trust_remote_code: bool = False) -> Any:
    """A fast tokenizer straight from ``tokenizer.json`` when there is one (and no code of the model's may
    define another).

    AutoTokenizer gives the same class but first imports the model-side code to read the config,
    seconds more on a small CPU.
    """
    if (path / "tokenizer.json").is_file() and not trust_remote_code:
        from transformers import PreTrainedTokenizerFast

        return PreTrainedTokenizerFast.from_pretrained(path)
    from transformers import AutoTokenizer  # importing it loads torch and the model registry

    return AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)


def load_causal_lm(cfg: ModelConfig, path: Path, device_type: str = "cpu") -> torch.nn.Module:
    """The base model from a local HF folder in ``cfg.dtype`` (quantized on the current GPU, or the CPU, for QLoRA),
    with the attention kernel ``cfg.attn_implementation`` resolves to on a ``device_type`` worker."""
    import torch

    dtype = getattr(torch, cfg.dtype)
    kernel = transformers_attention(cfg.attn_implementation, device_type)
    already = quantized_base(path)
    if already and cfg.quantization_bit:
        raise ModelSourceError(
            f"{path}: the model is already quantized ({already}), so model.quantization_bit cannot quantize it "
            "again: remove quantization_bit; LoRA trains on the quantized base as it is"
        )
    try:
        model = _load_lm(cfg, path, dtype, kernel)
    except ValueError as err:
        if "trust_remote_code" in str(err) and not cfg.trust_remote_code:
            raise ModelSourceError(
                f"{path}: the model ships its own Python code (auto_map in its config.json), which runs only with "
                "model.trust_remote_code: true; set it if you trust that code"
            ) from None
        if kernel == PACKED_SDPA or "attention" not in str(err).lower():
            raise
        if cfg.attn_implementation != "auto":
            raise ModelSourceError(
                f"{path}: this architecture does not run model.attn_implementation {kernel} in transformers "
                f"({err}); use sdpa or auto"
            ) from None
        model = _load_lm(cfg, path, dtype, transformers_attention("sdpa", device_type))
    if cfg.liger_kernel and device_type == "cuda":
        _apply_liger(model)
    if cfg.quantization_bit:
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    if cfg.gradient_checkpointing:
        # Non-reentrant checkpointing also works when the inputs need no grad (LoRA on a frozen base).
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})  # type: ignore[operator]
    if cfg.compile:
        model.compile()  # in place: the module (and its checkpoints) stay as they are; traced at the first step
    return model


def _apply_liger(model: torch.nn.Module) -> None:
    """Liger's RMSNorm, RoPE and SwiGLU/GeGLU kernels in place of the model's own (the loss stays ours)."""
    try:
        from liger_kernel.transformers.monkey_patch import MODEL_TYPE_TO_APPLY_LIGER_FN, _apply_liger_kernel_to_instance
    except ImportError as err:
        raise ModelSourceError(
            f"model.liger_kernel needs the liger-kernel package on the GPU workers ({err}): pip install "
            "'raytune-ft[gpu]' there, or set model.liger_kernel: false"
        ) from None
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    if model_type not in MODEL_TYPE_TO_APPLY_LIGER_FN:
        print(f"raytune_ft: Liger has no kernels for model type {model_type!r}; it trains unpatched", flush=True)
        return
    _apply_liger_kernel_to_instance(model, fused_linear_cross_entropy=False, cross_entropy=False)


def _load_lm(cfg: ModelConfig, path: Path, dtype: torch.dtype, kernel: str) -> torch.nn.Module:
    from transformers import AutoModelForCausalLM, AutoModelForImageTextToText

    auto = AutoModelForImageTextToText if is_vision_language(path) else AutoModelForCausalLM
    model: torch.nn.Module = auto.from_pretrained(
        path,
        dtype=dtype,
        attn_implementation=kernel,
        trust_remote_code=cfg.trust_remote_code,
        **_quantization(cfg, dtype),
    )
    return model


def _quantization(cfg: ModelConfig, dtype: torch.dtype) -> dict[str, Any]:
    """``from_pretrained`` arguments for QLoRA: the ``quantization_method`` config and the current GPU (else the
    CPU)."""
    if cfg.quantization_bit is None:
        return {}
    import importlib.util

    import torch

    package = {"bnb": "bitsandbytes", "torchao": "torchao"}[cfg.quantization_method]
    if importlib.util.find_spec(package) is None:
        raise ModelSourceError(
            f"model.quantization_bit with quantization_method {cfg.quantization_method} needs the {package} package "
            f"on every worker: pip install {package}"
        )
    # bitsandbytes' CPU backend trains 4- and 8-bit LoRA, torchao's int8 weight-only one too (tests/unit/test_qlora.py).
    device = torch.cuda.current_device() if torch.cuda.is_available() else "cpu"
    return {
        "quantization_config": _QUANTIZERS[cfg.quantization_method](cfg.quantization_bit, dtype),
        "device_map": {"": device},
    }


def _bitsandbytes(bits: int, dtype: torch.dtype) -> Any:
    from transformers import BitsAndBytesConfig

    if bits == 4:
        return BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True, bnb_4bit_compute_dtype=dtype
        )
    return BitsAndBytesConfig(load_in_8bit=True)


def _torchao(bits: int, dtype: torch.dtype) -> Any:
    from torchao.quantization import Int4WeightOnlyConfig, Int8WeightOnlyConfig
    from transformers import TorchAoConfig

    return TorchAoConfig(Int4WeightOnlyConfig(group_size=128) if bits == 4 else Int8WeightOnlyConfig())


_QUANTIZERS = {"bnb": _bitsandbytes, "torchao": _torchao}
"""``model.quantization_method`` -> its transformers quantization config for ``(bits, compute dtype)``."""


def quantized_base(folder: Path) -> str | None:
    """The method a model folder was already quantized with (its config.json's ``quantization_config``), if any."""
    import json

    path = folder / "config.json"
    if not path.is_file():
        return None
    quantization = json.loads(path.read_text(encoding="utf-8")).get("quantization_config")
    return str(quantization.get("quant_method", "unknown")) if isinstance(quantization, dict) else None


def load_base(model: ModelConfig, adapter: AdapterConfig | None = None) -> torch.nn.Module:
    """The base model of a run: ``model.source`` with the ``adapter.init_from`` adapters training merged
    into it (``merged_adapters``), so the run's checkpoints sit on it as plain adapters."""
    return _merged_base(model, merged_adapters(adapter) if adapter is not None else [])


def _merged_base(model: ModelConfig, merged: list[str]) -> torch.nn.Module:
    return merge_adapters(load_causal_lm(model, resolve_model(model)), merged, model.cache_dir)


def load_for_inference(
    model_source: str | None, adapter: str | Path | None = None, config: JobConfig | None = None
) -> tuple[torch.nn.Module, Any]:
    """(model, tokenizer) for generation.

    - ``adapter``: a LoRA checkpoint, a run directory (its newest checkpoint) or any PEFT adapter folder,
      on the base it was trained on (its config's ``model.source`` with the adapters its ``adapter.init_from``
      merged), ``model_source`` replacing that source when given; a PEFT folder without our config takes
      ``model_source`` or ``config``'s.
    - else ``config`` with ``adapter.init_from``: its model with those adapters (LLaMA-Factory's
      ``adapter_name_or_path``), all but the last merged;
    - else ``model_source`` (or ``config``'s): a model, or a full-weights checkpoint or run directory.

    ``config``'s ``model`` section (``trust_remote_code``, ``cache_dir``) applies to the models it names.
    """
    given = config.model if config is not None else ModelConfig()
    if adapter is not None:
        folder = adapter_folder(adapter, given.cache_dir, key="adapter")
        model, merged = trained_base(folder, model_source, config)
        return _with_adapter(_merged_base(model, merged), model, folder)
    if model_source is None and config is None:
        raise ModelSourceError("give a model source (--model) or an adapter checkpoint (--adapter)")
    model = inference_model(given, model_source)
    if config is not None and config.adapter.init_from:
        entries = config.adapter.init_from
        return _with_adapter(_merged_base(model, entries[:-1]), model, adapter_folder(entries[-1], model.cache_dir))
    checkpoint = _maybe_checkpoint(model.source)
    if checkpoint is not None:  # a full-weights run: its own code may be needed to load it
        saved = load_config(checkpoint / CONFIG_FILE).model
        model = model.model_copy(update={"trust_remote_code": model.trust_remote_code or saved.trust_remote_code})
    folder = checkpoint or resolve_model(model)
    return load_causal_lm(model, folder).eval(), load_tokenizer(folder, trust_remote_code=model.trust_remote_code)


def _with_adapter(base: torch.nn.Module, model: ModelConfig, folder: Path) -> tuple[torch.nn.Module, Any]:
    """The adapter in ``folder`` on ``base`` (loaded from ``model``), with the adapter's tokenizer (a PEFT
    folder without one: the base model's)."""
    from peft import PeftModel

    peft_model = PeftModel.from_pretrained(base, folder)  # type: ignore[arg-type]
    tokenizer = load_tokenizer(tokenizer_folder(folder, model), trust_remote_code=model.trust_remote_code)
    return peft_model.eval(), tokenizer


def tokenizer_folder(adapter: Path | None, base: Path | ModelConfig) -> Path:
    """Where the tokenizer (and chat template) of an adapter on ``base`` is: the adapter's folder when it
    holds one (our checkpoints do), else the base model's (``base`` a folder, or a ``model`` section resolved
    here only when needed)."""
    if adapter is not None and any((adapter / name).is_file() for name in ("tokenizer_config.json", "tokenizer.json")):
        return adapter
    return base if isinstance(base, Path) else resolve_model(base)


def trained_base(folder: Path, model_source: str | None, config: JobConfig | None) -> tuple[ModelConfig, list[str]]:
    """(the model section, pinned, and the adapters to merge into it) that the adapter in ``folder`` was trained
    on: its raytune_ft config's, ``model_source`` replacing the source when given; a PEFT folder without our
    config takes ``model_source`` or ``config``'s model. ``config``'s ``trust_remote_code`` adds to the saved one."""
    saved_file = folder / CONFIG_FILE
    if saved_file.is_file():
        saved = load_config(saved_file)
        model, merged = saved.model, merged_adapters(saved.adapter)
        if config is not None and config.model.trust_remote_code:
            model = model.model_copy(update={"trust_remote_code": True})
    elif model_source is not None or config is not None:
        model, merged = (config.model if config is not None else ModelConfig()), []
    else:
        raise ModelSourceError(f"{folder}: a PEFT adapter without a raytune_ft config: give its base model (--model)")
    return inference_model(model, model_source), merged


def inference_model(model: ModelConfig, source: str | None = None) -> ModelConfig:
    """What inference loads of a ``model`` section: its source (or ``source``) pinned, its cache and code
    trust (warned about), in float32."""
    loaded = ModelConfig(
        source=source or model.source, trust_remote_code=model.trust_remote_code, cache_dir=model.cache_dir
    )
    return pin_model_source(loaded)


def _maybe_checkpoint(source: str) -> Path | None:
    """The newest full-weights checkpoint when ``source`` is one of our checkpoints or a run folder."""
    path = Path(source).expanduser()
    if source.startswith("builtin:") or not path.is_dir():
        return None
    if (path / CONFIG_FILE).is_file():  # a checkpoint: its config says whether its code may run
        return path
    if (path / "config.json").is_file():
        return None
    try:
        return latest_checkpoint(path)
    except CheckpointError:
        return None

"""Load tokenizers and causal LMs from resolved sources and from our checkpoints.

Training and inference both come through here, so the tokenizer (and its chat template) saved
in a checkpoint is the one every reader uses: training and chat cannot drift apart.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from raytune_ft.config import ModelConfig, load_config

from .checkpoint import CONFIG_FILE, CheckpointError, is_adapter_checkpoint, latest_checkpoint
from .source import ModelSourceError, resolve_model_source

if TYPE_CHECKING:  # torch loads lazily: tokenizer actors import this package and never need it
    import torch

__all__ = ["load_causal_lm", "load_for_inference", "load_row_tokenizer", "load_tokenizer", "row_tokenizer_from_folder"]


def load_tokenizer(path: Path, require_chat_template: bool = True) -> Any:
    """Tokenizer with a pad token (the EOS token when the model defines none).

    Training may load a base model's tokenizer without a chat template and give it a named one
    (``data.template``); everything else needs the template the model was trained with.
    """
    tokenizer = _from_pretrained(path)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    if require_chat_template and not getattr(tokenizer, "chat_template", None):
        raise ModelSourceError(
            f"{path}: the tokenizer has no chat template. To train this base model, set data.template "
            "(e.g. default or chatml); its checkpoints then carry the template."
        )
    return tokenizer


def load_row_tokenizer(source: str) -> Any:
    """What the data workers tokenize with: a ``RowTokenizer`` (no transformers import; the same token
    rows) when the model folder allows it, else its transformers tokenizer as it ships (no template check)."""
    return row_tokenizer_from_folder(resolve_model_source(source))


def row_tokenizer_from_folder(path: Path) -> Any:
    """``load_row_tokenizer`` for a folder that holds a tokenizer but no model (an adapter checkpoint)."""
    from .fast_tokenizer import RowTokenizer

    return RowTokenizer.from_folder(path) or load_tokenizer(path, require_chat_template=False)


def _from_pretrained(path: Path) -> Any:
    """A fast tokenizer straight from ``tokenizer.json`` when there is one.

    AutoTokenizer gives the same class but first imports the model-side code to read the config,
    seconds more on a small CPU.
    """
    if (path / "tokenizer.json").is_file():
        from transformers import PreTrainedTokenizerFast

        return PreTrainedTokenizerFast.from_pretrained(path)
    from transformers import AutoTokenizer  # importing it loads torch and the model registry

    return AutoTokenizer.from_pretrained(path)


def load_causal_lm(cfg: ModelConfig, path: Path) -> torch.nn.Module:
    """The base model from a local HF folder in ``cfg.dtype`` (quantized on the current GPU for QLoRA)."""
    import torch
    from transformers import AutoModelForCausalLM

    dtype = getattr(torch, cfg.dtype)
    model: torch.nn.Module = AutoModelForCausalLM.from_pretrained(
        path, dtype=dtype, attn_implementation=cfg.attn_implementation, **_quantization(cfg, dtype)
    )
    if cfg.quantization_bit:
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    if cfg.gradient_checkpointing:
        # Non-reentrant checkpointing also works when the inputs need no grad (LoRA on a frozen base).
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})  # type: ignore[operator]
    if cfg.compile:
        model.compile()  # in place: the module (and its checkpoints) stay as they are; traced at the first step
    return model


def _quantization(cfg: ModelConfig, dtype: torch.dtype) -> dict[str, Any]:
    """``from_pretrained`` arguments for QLoRA: a bitsandbytes config and the current GPU."""
    if cfg.quantization_bit is None:
        return {}
    import importlib.util

    import torch

    if importlib.util.find_spec("bitsandbytes") is None:
        raise ModelSourceError(
            "model.quantization_bit (QLoRA) needs the bitsandbytes package: pip install bitsandbytes"
        )
    if not torch.cuda.is_available():
        raise ModelSourceError("model.quantization_bit (QLoRA) needs a CUDA GPU in every training worker")
    from transformers import BitsAndBytesConfig

    if cfg.quantization_bit == 4:
        quantization = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True, bnb_4bit_compute_dtype=dtype
        )
    else:
        quantization = BitsAndBytesConfig(load_in_8bit=True)
    return {"quantization_config": quantization, "device_map": {"": torch.cuda.current_device()}}


def load_for_inference(model_source: str | None, adapter: str | Path | None = None) -> tuple[torch.nn.Module, Any]:
    """(model, tokenizer) for generation from a model source and/or an adapter checkpoint.

    ``adapter`` may be a LoRA checkpoint folder or a run directory (its newest checkpoint is used);
    its base model defaults to the one it was trained on. A full-weights checkpoint or run
    directory is passed as ``model_source``.
    """
    if adapter is None:
        if model_source is None:
            raise ModelSourceError("give a model source (--model) or an adapter checkpoint (--adapter)")
        folder = _maybe_checkpoint(model_source) or resolve_model_source(model_source)
        return load_causal_lm(ModelConfig(), folder).eval(), load_tokenizer(folder)
    from peft import PeftModel

    checkpoint = latest_checkpoint(adapter)
    if not is_adapter_checkpoint(checkpoint):
        raise CheckpointError(f"{checkpoint} holds full weights, not an adapter: pass it as --model")
    source = model_source or load_config(checkpoint / CONFIG_FILE).model.source
    base = load_causal_lm(ModelConfig(), resolve_model_source(source))
    model = PeftModel.from_pretrained(base, checkpoint)
    return model.eval(), load_tokenizer(checkpoint)


def _maybe_checkpoint(source: str) -> Path | None:
    """The newest full-weights checkpoint when ``source`` is a checkpoint or run folder."""
    path = Path(source).expanduser()
    if source.startswith("builtin:") or not path.is_dir() or (path / "config.json").is_file():
        return None
    try:
        return latest_checkpoint(path)
    except CheckpointError:
        return None

"""Write a merged model as one GGUF file (f16 or q8_0), for llama.cpp, Ollama and LM Studio users.

The ``gguf`` package (llama.cpp's own writer) does the encoding; this module supplies what
llama.cpp's ``convert_hf_to_gguf.py`` would: architecture metadata, tensor names, the q/k row order
llama.cpp's rotary embedding expects, and the tokenizer. Supported: the llama family (llama, mistral)
and qwen2, with byte-level BPE tokenizers (GPT-2 style, as SmolLM2, Llama 3 and Qwen2 use). Anything
else is refused with the way out: export ``--format hf`` and convert with llama.cpp.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .merge import ExportError

__all__ = ["GGUF_ARCHITECTURES", "GGUF_TYPES", "GgufArchitecture", "write_gguf"]


@dataclass(frozen=True)
class GgufArchitecture:
    name: str
    """The ``general.architecture`` llama.cpp knows it by."""
    permute_qk: bool
    """llama.cpp's rotary embedding pairs adjacent dimensions; HF's llama pairs halves, so q/k rows are reordered."""


GGUF_ARCHITECTURES = {
    "llama": GgufArchitecture("llama", permute_qk=True),
    "mistral": GgufArchitecture("llama", permute_qk=True),
    "qwen2": GgufArchitecture("qwen2", permute_qk=False),
}
"""HF ``model_type`` -> how it is written."""

GGUF_TYPES = ("f16", "q8_0")
QUANT_BLOCK = 32
"""Elements per q8_0 block: a row must be a multiple of it to quantize."""


def write_gguf(model: Any, tokenizer: Any, path: Path, gguf_type: str, name: str) -> None:
    """Write ``model`` (a plain HF causal LM) and ``tokenizer`` to ``path`` as one GGUF file."""
    import gguf

    config = model.config
    arch = _architecture(config)
    writer = gguf.GGUFWriter(path, arch.name)
    writer.add_name(name)
    writer.add_file_type(gguf.LlamaFileType.MOSTLY_F16 if gguf_type == "f16" else gguf.LlamaFileType.MOSTLY_Q8_0)
    _add_hyperparameters(writer, config)
    _add_tokenizer(writer, tokenizer)
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH[arch.name.upper()], config.num_hidden_layers)
    for hf_name, tensor in _tensors(model, arch):
        gguf_name = names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        if gguf_name is None:
            raise ExportError(f"GGUF export: no llama.cpp name for the tensor {hf_name!r} of {config.model_type}")
        data, dtype = _encode(tensor, gguf_type)
        writer.add_tensor(gguf_name, data, raw_dtype=dtype)
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file(progress=False)
    writer.close()


def _architecture(config: Any) -> GgufArchitecture:
    arch = GGUF_ARCHITECTURES.get(config.model_type)
    if arch is None:
        raise ExportError(
            f"GGUF export supports {', '.join(sorted(GGUF_ARCHITECTURES))} models, not {config.model_type!r}; "
            "export --format hf and convert that folder with llama.cpp's convert_hf_to_gguf.py"
        )
    return arch


def _add_hyperparameters(writer: Any, config: Any) -> None:
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(config.num_key_value_heads or config.num_attention_heads)
    writer.add_rope_dimension_count(head_dim)
    writer.add_rope_freq_base(float(_rope_theta(config)))
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_vocab_size(config.vocab_size)


def _rope_theta(config: Any) -> float:
    parameters = getattr(config, "rope_parameters", None) or {}
    theta = parameters.get("rope_theta") or getattr(config, "rope_theta", None)
    if theta is None:
        raise ExportError(f"GGUF export: the {config.model_type} config records no rope_theta")
    if parameters.get("rope_type", "default") != "default":
        raise ExportError(
            f"GGUF export: rope scaling {parameters['rope_type']!r} is not written by raytune_ft; "
            "export --format hf and convert with llama.cpp's convert_hf_to_gguf.py"
        )
    return float(theta)


def _add_tokenizer(writer: Any, tokenizer: Any) -> None:
    """Byte-level BPE vocabulary, merges, token types, special ids and the chat template."""
    import gguf

    spec = json.loads(tokenizer.backend_tokenizer.to_str())
    model = spec["model"]
    if model.get("type") != "BPE" or not _is_byte_level(spec):
        raise ExportError(
            "GGUF export writes byte-level BPE tokenizers (GPT-2 style) only; this one is "
            f"{model.get('type')}. Export --format hf and convert with llama.cpp's convert_hf_to_gguf.py"
        )
    vocab = tokenizer.get_vocab()
    by_id = {index: token for token, index in vocab.items()}
    special = {token.content for token in tokenizer.added_tokens_decoder.values() if token.special}
    added = {token.content for token in tokenizer.added_tokens_decoder.values()}
    tokens, types = [], []
    for index in range(len(by_id)):
        token = by_id.get(index, f"[PAD{index}]")
        tokens.append(token)
        if index not in by_id:
            types.append(gguf.TokenType.UNUSED)
        elif token in special:
            types.append(gguf.TokenType.CONTROL)
        elif token in added:
            types.append(gguf.TokenType.USER_DEFINED)
        else:
            types.append(gguf.TokenType.NORMAL)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges([m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])])
    for setter, token_id in (
        (writer.add_bos_token_id, tokenizer.bos_token_id),
        (writer.add_eos_token_id, tokenizer.eos_token_id),
        (writer.add_unk_token_id, tokenizer.unk_token_id),
        (writer.add_pad_token_id, tokenizer.pad_token_id),
    ):
        if token_id is not None:
            setter(token_id)
    writer.add_add_bos_token(bool(getattr(tokenizer, "add_bos_token", False)))
    if getattr(tokenizer, "chat_template", None):
        writer.add_chat_template(tokenizer.chat_template)


def _is_byte_level(spec: dict[str, Any]) -> bool:
    return "ByteLevel" in json.dumps(spec.get("pre_tokenizer")) or "ByteLevel" in json.dumps(spec.get("decoder"))


def _tensors(model: Any, arch: GgufArchitecture) -> Iterator[tuple[str, Any]]:
    config = model.config
    heads, kv_heads = config.num_attention_heads, config.num_key_value_heads or config.num_attention_heads
    permute: dict[str, Callable[[Any], Any]] = {}
    if arch.permute_qk:
        permute = {"q_proj": lambda w: _permute(w, heads), "k_proj": lambda w: _permute(w, kv_heads)}
    for name, tensor in model.state_dict().items():
        if name == "lm_head.weight" and config.tie_word_embeddings:
            continue  # llama.cpp reuses token_embd, as the tie says
        for key, reorder in permute.items():
            if f".{key}." in name:
                tensor = reorder(tensor)
        yield name, tensor


def _permute(weight: Any, heads: int) -> Any:
    """HF's rotary layout (halves) -> llama.cpp's (interleaved pairs), per head; as convert_hf_to_gguf.py does."""
    return (
        weight.reshape(heads, 2, weight.shape[0] // heads // 2, *weight.shape[1:]).swapaxes(1, 2).reshape(weight.shape)
    )


def _encode(tensor: Any, gguf_type: str) -> tuple[Any, Any]:
    """(data, ggml type): norms and biases stay float32; matrices become f16 or q8_0 (f16 when rows don't fit)."""
    import gguf
    import numpy as np

    data = tensor.detach().float().cpu().numpy()
    if data.ndim < 2:
        return data.astype(np.float32), gguf.GGMLQuantizationType.F32
    if gguf_type == "q8_0" and data.shape[-1] % QUANT_BLOCK == 0:
        return gguf.quants.quantize(data, gguf.GGMLQuantizationType.Q8_0), gguf.GGMLQuantizationType.Q8_0
    return data.astype(np.float16), gguf.GGMLQuantizationType.F16

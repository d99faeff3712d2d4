"""Export stage: a training checkpoint becomes a standalone model other tools load.

LoRA/DoRA adapters are merged into their base; the result is written as Hugging Face safetensors
(for transformers, vLLM and our own ``serve``) or as a GGUF file (for llama.cpp and friends).
"""

from .gguf import GGUF_ARCHITECTURES, GGUF_TYPES, write_gguf
from .merge import ExportError, MergedModel, merge_checkpoint, merge_init_from
from .run import EXPORT_FORMATS, MANIFEST, export_checkpoint, export_init_from

__all__ = [
    "EXPORT_FORMATS",
    "GGUF_ARCHITECTURES",
    "GGUF_TYPES",
    "MANIFEST",
    "ExportError",
    "MergedModel",
    "export_checkpoint",
    "export_init_from",
    "merge_checkpoint",
    "merge_init_from",
    "write_gguf",
]

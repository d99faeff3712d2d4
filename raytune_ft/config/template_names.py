"""The names of raytune_ft's chat templates and tool formats, for config code (which imports nothing of ours).

The registry itself lives in ``raytune_ft.data.templates``; tests/unit/test_templates.py keeps these
tuples equal to it. ``DataConfig`` checks ``data.template`` / ``data.tool_format`` against them when a
config loads, so a misspelt name fails before any model or data is read, with the closest name suggested
(``closest_name``, which the data layer's own checks use too).
"""

from __future__ import annotations

import difflib
from collections.abc import Sequence

__all__ = [
    "TEMPLATE_NAMES",
    "TOOL_FORMAT_NAMES",
    "closest_name",
    "did_you_mean",
    "unknown_template",
    "unknown_tool_format",
]

TEMPLATE_NAMES: tuple[str, ...] = (
    "aeva", "alpaca", "baichuan2", "bailing", "bailing_v2", "breeze", "chatglm3", "chatml", "chatml_de",
    "cohere", "cpm4", "dbrx", "deepseek", "deepseek3", "deepseekcoder", "deepseekr1", "default", "dots_ocr",
    "empty", "ernie", "ernie_nothink", "ernie_vl", "exaone", "falcon", "falcon_h1", "fewshot", "gemma",
    "gemma2", "gemma3", "gemma3n", "gemma4", "gemma4n", "glm4", "glm4_5v", "glm4_7", "glm4_moe", "glm4v",
    "glm_ocr", "glmz1", "gpt_oss", "granite3", "granite3_vision", "granite4", "hunyuan", "hunyuan_small", "hy3",
    "index", "intern2", "intern_s1", "intern_vl", "keye_vl", "kimi_vl", "lfm2", "lfm2_vl", "llama2",
    "llama2_zh", "llama3", "llama4", "llava", "llava_next", "llava_next_llama3", "llava_next_mistral",
    "llava_next_qwen", "llava_next_video", "llava_next_video_mistral", "llava_next_video_yi", "llava_next_yi",
    "mimo", "mimo_v2", "mimo_vl", "minicpm_o", "minicpm_v", "minicpm_v_4_6", "minimax1", "minimax2",
    "ministral", "ministral3", "mistral", "mistral_small", "mllama", "moonlight", "olmo", "openchat",
    "openchat-3.6", "opencoder", "paligemma", "paligemma_chat", "phi", "phi4", "phi4_mini", "phi_small",
    "pixtral", "qwen", "qwen2_audio", "qwen2_omni", "qwen2_vl", "qwen3", "qwen3_5", "qwen3_5_nothink",
    "qwen3_6", "qwen3_nothink", "qwen3_omni", "qwen3_omni_nothink", "qwen3_vl", "qwen3_vl_nothink", "sailor",
    "seed_coder", "seed_oss", "smollm", "smollm2", "solar", "starchat", "telechat2", "vicuna", "video_llava",
    "xuanyuan", "yi", "yi_vl", "youtu", "youtu_vl", "yuan", "zephyr"
)  # fmt: skip
"""Every ``data.template`` name: LLaMA-Factory 0.9.5's registry, and ``baichuan2`` from 0.9.4."""

TOOL_FORMAT_NAMES: tuple[str, ...] = (
    "default", "gemma4", "glm4", "glm4_moe", "lfm2", "ling", "llama3", "minimax1", "minimax2", "mistral",
    "qwen", "qwen3_5", "seed_oss"
)  # fmt: skip
"""Every ``data.tool_format`` name (LLaMA-Factory's ``tool_format`` values)."""


def closest_name(name: str, names: Sequence[str]) -> str | None:
    """The name of ``names`` closest to ``name``, or None when none is close: of difflib's close matches,
    the fewest edits away (a swap of two letters counts as one edit, so "chatlm" gives "chatml", not
    "chatglm3", which difflib ranks first)."""
    close = difflib.get_close_matches(name, names, n=5)
    return min(close, key=lambda candidate: _edits(name, candidate)) if close else None


def did_you_mean(name: str, names: Sequence[str]) -> str:
    """`` (did you mean 'x'?)`` naming ``closest_name``, or "" when none is close."""
    close = closest_name(name, names)
    return f" (did you mean {close!r}?)" if close is not None else ""


def _edits(a: str, b: str) -> int:
    """Optimal string alignment distance: insertions, deletions, substitutions and adjacent swaps."""
    d = [[i + j if i * j == 0 else 0 for j in range(len(b) + 1)] for i in range(len(a) + 1)]
    for i in range(1, len(a) + 1):
        for j in range(1, len(b) + 1):
            d[i][j] = min(d[i - 1][j] + 1, d[i][j - 1] + 1, d[i - 1][j - 1] + (a[i - 1] != b[j - 1]))
            if i > 1 and j > 1 and a[i - 1] == b[j - 2] and a[i - 2] == b[j - 1]:
                d[i][j] = min(d[i][j], d[i - 2][j - 2] + 1)
    return d[len(a)][len(b)]


def unknown_template(name: str) -> str:
    """Why ``name`` is not a chat template, with the closest name (config and data say it alike)."""
    return (
        f"unknown chat template {name!r}{did_you_mean(name, TEMPLATE_NAMES)}; the names are LLaMA-Factory's "
        "(docs/templates.md lists them all)"
    )


def unknown_tool_format(name: str) -> str:
    """Why ``name`` is not a tool format, with the closest name and the choices."""
    choices = ", ".join(TOOL_FORMAT_NAMES)
    return f"unknown tool format {name!r}{did_you_mean(name, TOOL_FORMAT_NAMES)}; choose one of: {choices}"

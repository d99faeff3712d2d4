"""The one place training gets its tokenizer: the model's own, with ``data.template`` applied.

The tokenizer actors, the workers and every checkpoint use this same function, so the chat
template the data was rendered with is the one saved for chat, serve and export.
"""

from __future__ import annotations

from typing import Any

from raytune_ft.config import JobConfig
from raytune_ft.data import DataError
from raytune_ft.data.templates import TEMPLATE_NAMES, apply_template
from raytune_ft.models import load_tokenizer, resolve_model_source

__all__ = ["job_tokenizer", "training_tokenizer"]


def training_tokenizer(model_source: str, template: str | None) -> Any:
    """Tokenizer of ``model_source`` rendering chats with ``template`` (None: its own template)."""
    tokenizer = load_tokenizer(resolve_model_source(model_source), require_chat_template=False)
    if template is not None:
        return apply_template(tokenizer, template)
    if not getattr(tokenizer, "chat_template", None):
        raise DataError(
            f"model {model_source} has no chat template of its own: set data.template to one of "
            f"{', '.join(TEMPLATE_NAMES)}"
        )
    return tokenizer


def job_tokenizer(cfg: JobConfig) -> Any:
    """``training_tokenizer`` for a job config."""
    return training_tokenizer(cfg.model.source, cfg.data.template)

"""The one place training gets its tokenizer: the model's own, with ``data.template`` applied.

The tokenizer actors, the workers and every checkpoint use this same function, so the chat
template the data was rendered with is the one saved for chat, serve and export.
"""

from __future__ import annotations

from typing import Any

from raytune_ft.config import JobConfig, ModelConfig
from raytune_ft.data import DataError
from raytune_ft.data.templates import TemplateOptions, apply_template, template_options
from raytune_ft.models import load_tokenizer, resolve_model

__all__ = ["job_tokenizer", "training_tokenizer"]


def training_tokenizer(
    model_source: str | ModelConfig,
    template: str | None,
    options: TemplateOptions | None = None,
    train_on_prompt: bool = False,
) -> Any:
    """Tokenizer of ``model_source`` (a source or a ``model`` section) rendering chats with ``template``
    (None: its own template) under the template ``options``."""
    model = model_source if isinstance(model_source, ModelConfig) else ModelConfig(source=model_source)
    tokenizer = load_tokenizer(
        resolve_model(model), require_chat_template=False, trust_remote_code=model.trust_remote_code
    )
    if template is not None:
        return apply_template(tokenizer, template, options or TemplateOptions(), train_on_prompt)
    if not getattr(tokenizer, "chat_template", None):
        raise DataError(
            f"model {model.source} has no chat template of its own: set data.template to the template of its "
            "family (e.g. chatml, llama3, qwen3, mistral; every name is listed in docs/templates.md)"
        )
    return tokenizer


def job_tokenizer(cfg: JobConfig) -> Any:
    """``training_tokenizer`` for a job config."""
    return training_tokenizer(cfg.model, cfg.data.template, template_options(cfg.data), cfg.data.train_on_prompt)

"""What an endpoint will serve, decided on the driver before Ray starts: model, tokenizer, adapters, key.

``plan_serving`` turns a job config (and optionally a run directory, ``--checkpoint``) into a
``ServePlan``. Every path and adapter is checked here, so a typo is one clear error instead of a
replica that fails a minute into engine start. The model itself travels pinned, not as a folder: each
replica resolves it from its own node's cache (fetched there once per node), as training workers do.
"""

from __future__ import annotations

import hashlib
import os
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from raytune_ft.config import SERVED_NAME, ConfigWarning, InputError, JobConfig, ModelConfig, ServeConfig, load_config
from raytune_ft.models.checkpoint import (
    CONFIG_FILE,
    CheckpointError,
    adapter_rank,
    is_adapter_checkpoint,
    latest_checkpoint,
    vllm_lora_rank,
)
from raytune_ft.models.hub import hub_model
from raytune_ft.models.init_from import adapter_folder, merged_adapters
from raytune_ft.models.source import pin_model_source, resolve_model

from .adapters import AdapterCatalog

__all__ = ["API_KEY_ENV", "ServePlan", "checkpoint_config", "key_digest", "plan_serving", "replica_options"]

API_KEY_ENV = "RAYTUNE_FT_API_KEY"


@dataclass(frozen=True)
class ServePlan:
    model_id: str
    """The base model's name in the API."""
    model: ModelConfig
    """The served weights (base, merged export or full fine-tune), pinned: a Hub id at one revision, an absolute
    folder or a builtin model. Each replica resolves it on its own node (``resolve_model``)."""
    tokenizer_dir: Path | None
    """Folder whose tokenizer and chat template requests are rendered with (a checkpoint's); None: the model's."""
    catalog: AdapterCatalog
    """The LoRA adapters on top of the base (empty when none are configured)."""
    max_lora_rank: int | None
    """Largest LoRA rank the engine reserves room for; None serves no adapters."""
    api_key_digest: str | None
    """SHA-256 of the API key (the key itself never leaves the driver); None leaves the endpoint open."""
    serve: ServeConfig
    """The ``serve`` section it was planned from."""

    @property
    def trust_remote_code(self) -> bool:
        """Whether the engines may run the model's own code (``model.trust_remote_code``)."""
        return self.model.trust_remote_code


def plan_serving(cfg: JobConfig, checkpoint: str | None = None) -> ServePlan:
    """The plan for serving ``cfg.model.source`` (or ``checkpoint``'s run) with ``cfg.serve``'s adapters;
    without a checkpoint, ``cfg.adapter.init_from``'s one adapter is served too (as ``BASE:NAME``)."""
    serve = cfg.serve
    runs = dict(serve.adapters)
    model, tokenizer_dir, full_run = cfg.model, None, None
    if checkpoint is not None:
        newest = latest_checkpoint(checkpoint)
        trained = checkpoint_config(newest)
        tokenizer_dir = newest  # the chat template the run trained with
        trust = cfg.model.trust_remote_code or trained.model.trust_remote_code
        if is_adapter_checkpoint(newest):
            model = trained.model.model_copy(update={"trust_remote_code": trust})
            runs.setdefault(_served_name(trained.train.run_name), checkpoint)
        else:
            model = ModelConfig(source=str(newest), trust_remote_code=trust)
            full_run = _served_name(trained.train.run_name)
    elif cfg.adapter.init_from:
        name, folder = _init_from_adapter(cfg)
        runs.setdefault(name, str(folder))
    model = pin_model_source(model)  # a Hub id is checked by pinning; replicas fetch it on their nodes
    if hub_model(model.source) is None:
        resolve_model(model)  # a local folder checked here (a builtin model converted once)
    model_id = serve.model_name or full_run or _default_name(model.source)
    runs = {name: str(Path(path).expanduser().absolute()) for name, path in runs.items()}
    catalog = AdapterCatalog(model_id, runs, _checked_root(serve.adapter_root))
    _check_adapters(catalog, model)
    return ServePlan(
        model_id=model_id,
        model=model,
        tokenizer_dir=tokenizer_dir,
        catalog=catalog,
        max_lora_rank=_lora_rank(serve, catalog),
        api_key_digest=key_digest(serve.api_key or os.environ.get(API_KEY_ENV) or None),
        serve=serve,
    )


def _init_from_adapter(cfg: JobConfig) -> tuple[str, Path]:
    """(served name, folder) of the one ``adapter.init_from`` adapter an endpoint serves on its base."""
    adapters = cfg.adapter.init_from
    if len(adapters) > 1:
        raise InputError(
            f"adapter.init_from lists {len(adapters)} adapters; an endpoint serves one adapter on its base model. "
            f"Merge them into one model first (raytune-ft export) and serve that"
        )
    folder = adapter_folder(adapters[0], cfg.model.cache_dir)
    name = folder.parent.name if (folder / CONFIG_FILE).is_file() else folder.name  # our checkpoint: its run's
    return _served_name(name), folder


def replica_options(serve: ServeConfig) -> dict[str, Any]:
    """Serve deployment options for the replica count: fixed ``num_replicas`` or ``autoscaling``."""
    if serve.autoscaling is not None:
        return {"autoscaling_config": serve.autoscaling.model_dump()}
    return {"num_replicas": serve.num_replicas}


def checkpoint_config(folder: Path) -> JobConfig:
    """The job config a checkpoint was trained with."""
    path = folder / CONFIG_FILE
    if not path.is_file():
        raise CheckpointError(f"{folder}: no {CONFIG_FILE} in this checkpoint; it was not written by raytune-ft train")
    return load_config(path)


def key_digest(key: str | None) -> str | None:
    return hashlib.sha256(key.encode()).hexdigest() if key else None


def _default_name(source: str) -> str:
    if source.startswith("builtin:"):
        return source.removeprefix("builtin:")
    hub = hub_model(source)
    if hub is not None:
        return _served_name(hub.repo.rsplit("/", 1)[-1])
    return _served_name(Path(source).expanduser().resolve().name)


def _served_name(text: str) -> str:
    name = re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip(".-_")[:64] or "model"
    return name if re.match(SERVED_NAME, name) else f"m{name}"[:64]


def _checked_root(root: str | None) -> str | None:
    """``root`` as an absolute path (replicas run in other folders); a missing one is only warned about."""
    if root is None:
        return None
    folder = Path(root).expanduser().absolute()
    if not folder.is_dir():
        warnings.warn(
            f"serve.adapter_root {root!r}: no such folder yet; runs written to {folder} later become servable",
            ConfigWarning,
            stacklevel=2,
        )
    return str(folder)


def _check_adapters(catalog: AdapterCatalog, model: ModelConfig) -> None:
    for name, path in catalog.runs.items():
        versions = catalog.versions(name)
        if not versions:
            raise InputError(
                f"serve.adapters.{name}: {path!r} holds no LoRA adapter checkpoint (a folder with "
                "adapter_config.json and trainer_state.json, or a run directory of them)"
            )
        newest = versions[max(versions)]
        if not (newest / CONFIG_FILE).is_file():
            continue  # a PEFT folder from elsewhere: its base is the user's word
        trained = checkpoint_config(newest)
        if merged := merged_adapters(trained.adapter):
            raise InputError(
                f"serve.adapters.{name}: trained on {trained.model.source} with {len(merged)} adapter(s) of "
                "adapter.init_from merged into it; an endpoint serves adapters on the plain base model. Export the "
                f"merged model (raytune-ft export --checkpoint {newest}) and serve that"
            )
        base = ModelConfig(source=trained.model.source, cache_dir=trained.model.cache_dir)
        if pin_model_source(base).source != model.source:  # both pinned: the same revision or folder
            raise InputError(
                f"serve.adapters.{name}: trained on {trained.model.source!r}, but the served base model is "
                f"{model.source!r}; an adapter only works on its own base (serve it from an app with that "
                "model.source)"
            )


def _lora_rank(serve: ServeConfig, catalog: AdapterCatalog) -> int | None:
    if not catalog.runs and catalog.root is None:
        return None
    wanted = serve.max_lora_rank or max(
        [16, *(adapter_rank(max(catalog.versions(name).items())[1]) for name in catalog.names())]
    )
    return vllm_lora_rank(wanted)
